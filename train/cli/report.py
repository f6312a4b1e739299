"""`train report`: pictures of a run."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError
from train.cli.options import fail


def report_cmd(
    run_dir: Annotated[str, typer.Argument(help="A run directory of train stage1, stage2 or fusion.")],
    out: Annotated[Optional[str], typer.Option(help="PNG to write (default RUN_DIR/report.png); the HTML page "
                                                    "goes beside it.")] = None,
    with_eval: Annotated[bool, typer.Option(
        "--eval/--no-eval", help="Evaluate best.pt, or last.pt without validation (kept in eval.json).")]
    = True,
) -> None:
    """Draw a run's loss curves, learning rate, data wait, samples/s and evaluation (PNG + HTML)."""
    from train.report import report

    try:
        png, page = report(run_dir, out, with_eval)
    except (CacheError, FileNotFoundError, ValueError, RuntimeError) as e:
        fail(e)
    typer.echo(f"wrote {png} and {page}")

