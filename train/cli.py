"""`train`: the student trainer's command line. Stage commands are added per stage."""

from __future__ import annotations

from collections.abc import Sequence

import typer

app = typer.Typer(help="Train point-cloud students from a teacher cache.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def root() -> None:
    """Train point-cloud students from a teacher cache (see README)."""


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="train")
