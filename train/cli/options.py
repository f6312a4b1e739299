"""What the `train` commands share: the evaluation commands' option types, one-line errors, the run summary."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from cache_schema.errors import CacheError
from train.loop import ENCODERS_HELP

Cache = Annotated[str, typer.Option(help="Cache path or fsspec URL.")]
Ckpt = Annotated[str, typer.Option(help="Checkpoint (.pt), or 'random' for an untrained encoder.")]
Preset = Annotated[str, typer.Option("--model", help=f"Encoder for --ckpt random: {ENCODERS_HELP}.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Points = Annotated[int, typer.Option(help="Points per shape fed to the encoder.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress")]


def fail(e: Exception) -> None:
    message = str(e)
    if "Original Traceback" in message:  # raised in a DataLoader worker: its own last line says what happened
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def train_and_report(start, out: str) -> None:
    """Run a stage; bad input and a mismatched cache end with a message, not a traceback."""
    from train.loop import CacheMismatchError

    try:
        metrics = start()
    except (CacheError, CacheMismatchError, FileNotFoundError, ValueError) as e:
        fail(e)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line
        typer.echo(json.dumps({"run": out, **{k: round(v, 4) if isinstance(v, float) else v
                                              for k, v in metrics.items()}}))

