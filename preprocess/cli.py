"""`preprocess`: the cache builder's command line (one command group per dataset kind)."""

from __future__ import annotations

from collections.abc import Sequence

import typer

from cache_schema.metadata import tool_version

app = typer.Typer(help="Build teacher-feature caches from meshes or LiDAR scenes.", no_args_is_help=True,
                  add_completion=False)


@app.callback(invoke_without_command=True)
def root(version: bool = typer.Option(False, "--version", help="Print the tool version and exit.")) -> None:
    """Build teacher-feature caches from meshes or LiDAR scenes.(see README)."""
    if version:
        typer.echo(f"teacher-cache {tool_version()}")
        raise typer.Exit()


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="preprocess")
