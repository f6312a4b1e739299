"""`train report`: pictures of a run, and what it cost."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError
from train.cli.options import fail


def report_cmd(
    run_dirs: Annotated[list[str], typer.Argument(
        help="A run directory of any train command (with --costs: one or more).", metavar="RUN_DIR")],
    out: Annotated[Optional[str], typer.Option(help="PNG to write (default RUN_DIR/report.png); the HTML page "
                                                    "goes beside it.")] = None,
    with_eval: Annotated[bool, typer.Option(
        "--eval/--no-eval", help="Evaluate best.pt, or last.pt without validation (kept in eval.json).")]
    = True,
    costs: Annotated[bool, typer.Option(
        "--costs", help="Only print the cost tables (device-hours per stage along each run's starting checkpoints, "
                        "#params, totals; the paper's Table 5) of every RUN_DIR, side by side; no pictures.")]
    = False,
) -> None:
    """Draw a run's loss curves, learning rate, data wait, samples/s and evaluation (PNG + HTML), and print what
    it and the runs it started from cost (from their cost.json)."""
    from train.report import chain_table, cost_table, report

    try:
        if not costs:
            if len(run_dirs) != 1:
                raise ValueError(f"`train report` draws one run, got {len(run_dirs)}; pass --costs to compare "
                                 "the costs of several")
            png, page = report(run_dirs[0], out, with_eval)
            typer.echo(f"wrote {png} and {page}\n")
        for run_dir in run_dirs:
            typer.echo(f"{run_dir}:\n{chain_table(run_dir)}\n")
        if costs:
            typer.echo(cost_table(run_dirs))
    except (CacheError, FileNotFoundError, ValueError, RuntimeError) as e:
        fail(e)
