"""`preprocess`: the cache builder's command line. One command group per dataset kind."""

from __future__ import annotations

from collections.abc import Sequence

import typer

app = typer.Typer(help="Build teacher-feature caches from meshes or LiDAR scenes.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def root() -> None:
    """Build teacher-feature caches from meshes or LiDAR scenes (see README)."""


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="preprocess")
