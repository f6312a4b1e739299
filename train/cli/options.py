"""What every `train` command shares: option types, one-line errors, `--config` re-runs, the run summary."""

from __future__ import annotations

import json
import os
from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError

Cache = Annotated[str, typer.Option(help="Cache path or fsspec URL.")]
Ckpt = Annotated[str, typer.Option(help="Checkpoint (.pt), or 'random' for an untrained encoder.")]
ENCODERS_HELP = ("point-mae-tiny (CPU), point-mae (the official 12 x 384), point-m2ae-tiny (CPU) or point-m2ae (the "
                 "official multi-scale encoder, the paper's best rows); tiny and base are point-mae-tiny and point-mae")
Model = Annotated[str, typer.Option("--model", help=f"Encoder of a new model: {ENCODERS_HELP}.")]
Preset = Annotated[str, typer.Option("--model", help=f"Encoder for --ckpt random: {ENCODERS_HELP}.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Points = Annotated[int, typer.Option(help="Points per shape fed to the encoder.")]
Out = Annotated[str, typer.Option(help="Run directory (checkpoints, metrics.csv, tensorboard/, config.json).")]
Steps = Annotated[int, typer.Option(help="Optimiser steps.")]
BatchSize = Annotated[int, typer.Option(help="Samples per step on each process.")]
Lr = Annotated[float, typer.Option(help="Peak AdamW learning rate.")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes.")]
CkptEvery = Annotated[int, typer.Option(help="Save last.pt every N steps (and at the end).")]
Resume = Annotated[bool, typer.Option(help="Continue OUT/last.pt exactly.")]
StopAt = Annotated[Optional[int], typer.Option(help="Save and exit after this step (resume later).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress")]
RunCache = Annotated[Optional[str], typer.Option(help="Cache path or fsspec URL (required unless --config gives it).")]
Precision = Annotated[str, typer.Option(help="fp32, bf16, fp16 (with loss scaling) or auto: bf16 on a GPU that "
                                             "has it, fp16 on older GPUs, fp32 on a CPU.")]
Overwrite = Annotated[bool, typer.Option(help="Start afresh in a non-empty --out (its files are deleted).")]
ValSplit = Annotated[Optional[str], typer.Option(
    help="Validate on this split every --val-every steps; best.pt is the best validated checkpoint (without "
         "validation there is no best.pt, only last.pt).")]
ValCache = Annotated[Optional[str], typer.Option(help="The cache --val-split is in (default: --cache).")]
ValEvery = Annotated[Optional[int], typer.Option(help="Steps between validations (default: --ckpt-every).")]
RunConfig = Annotated[Optional[str], typer.Option(
    "--config", help="A run's config.json: train again with its settings; options given here override them.")]



def fail(e: Exception) -> None:
    message = str(e)
    if "Original Traceback" in message:  # raised in a DataLoader worker: its own last line says what happened
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def run_config(ctx: typer.Context, cls, stage: str, values: dict, config: str | None,
                params: dict[str, tuple[str, ...]] | None = None):
    """``cls(**values)``; with ``--config``, every setting not given on the command line comes from that run.

    ``params`` names the command-line options behind a field when they differ from the field's name.
    """
    if config:
        try:
            with open(config) as f:
                saved = json.load(f)
            if saved.get("stage") != stage:
                raise ValueError(f"{config} is a {saved.get('stage')!r} run; this command trains {stage!r}")
            settings = saved["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(ValueError(f"--config {config}: {e}" if not str(e).startswith(config) else str(e)))
        for field, value in settings.items():
            # by name: typer may bring its own copy of click, whose enum is not click's
            given = any(getattr(ctx.get_parameter_source(p), "name", None) == "COMMANDLINE"
                        for p in (params or {}).get(field, (field,)))
            if field in values and field not in ("out", "overwrite") and not given:
                values[field] = value
    if not values.get("cache"):
        fail(ValueError("--cache is required (or --config RUN/config.json to take the run's)"))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        fail(e)


def term_weights(weight: list[str] | None) -> dict[str, float]:
    weights = {}
    for w in weight or []:
        term, sep, value = w.partition("=")
        try:
            weights[term] = float(value)
        except ValueError:
            fail(ValueError(f"--weight is TERM=NUMBER like clip-vit-b16/text=0.5, got {w!r}"))
        if not sep or not term:
            fail(ValueError(f"--weight is TERM=NUMBER like clip-vit-b16/text=0.5, got {w!r}"))
    return weights


def train_and_report(start, out: str) -> None:
    """Run a stage; bad input and a mismatched cache end with a message, not a traceback."""
    from train.loop import CacheMismatchError

    try:
        metrics = start()
    except (CacheError, CacheMismatchError, FileNotFoundError, ValueError) as e:
        fail(e)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line
        typer.echo(json.dumps({"run": out, **{k: round(v, 4) for k, v in metrics.items()}}))



Frames = Annotated[int, typer.Option(help="Frames per step on each process.")]
