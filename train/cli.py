"""`train`: stage commands and evaluation. Commands are thin; they call library functions.

    train stage1 --cache caches/demo.zarr --out runs/s1
    train stage2 --cache caches/demo.zarr --teacher runs/s1/last.pt --out runs/s2
    train export-teacher --ckpt runs/s1/last.pt --cache caches/demo.zarr
    train fusion pretrain --cache caches/demo-scenes.zarr --out runs/f-pre
    train fusion finetune --cache caches/demo-scenes.zarr --out runs/f-1pc --labels 1% --init runs/f-pre/last.pt
    train eval seg --cache caches/demo-scenes.zarr --ckpt runs/f-1pc/last.pt --json
    train eval zeroshot --cache caches/demo.zarr --ckpt runs/s1/last.pt --json
    train eval linear --cache caches/demo.zarr --ckpt random
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError

app = typer.Typer(help="Train point-cloud students from a teacher cache.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
eval_app = typer.Typer(help="Evaluate a checkpoint (or --ckpt random) on an objects cache.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
fusion_app = typer.Typer(help="Image-to-LiDAR fusion distillation on a scenes cache.", no_args_is_help=True)
app.add_typer(fusion_app, name="fusion")

Cache = Annotated[str, typer.Option(help="Cache path or fsspec URL.")]
Ckpt = Annotated[str, typer.Option(help="Checkpoint (.pt), or 'random' for an untrained encoder.")]
Preset = Annotated[str, typer.Option(help="Model preset for --ckpt random (tiny or base).")]
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


@app.callback()
def root() -> None:
    """Train point-cloud students from a teacher cache (see README)."""


def _fail(e: Exception) -> None:
    message = str(e)
    if "Original Traceback" in message:  # raised in a DataLoader worker: its own last line says what happened
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _run_config(ctx: typer.Context, cls, stage: str, values: dict, config: str | None,
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
            _fail(ValueError(f"--config {config}: {e}" if not str(e).startswith(config) else str(e)))
        for field, value in settings.items():
            # by name: typer may bring its own copy of click, whose enum is not click's
            given = any(getattr(ctx.get_parameter_source(p), "name", None) == "COMMANDLINE"
                        for p in (params or {}).get(field, (field,)))
            if field in values and field not in ("out", "overwrite") and not given:
                values[field] = value
    if not values.get("cache"):
        _fail(ValueError("--cache is required (or --config RUN/config.json to take the run's)"))
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        _fail(e)


def _term_weights(weight: list[str] | None) -> dict[str, float]:
    weights = {}
    for w in weight or []:
        term, sep, value = w.partition("=")
        try:
            weights[term] = float(value)
        except ValueError:
            _fail(ValueError(f"--weight is TERM=NUMBER like clip-vit-b16/text=0.5, got {w!r}"))
        if not sep or not term:
            _fail(ValueError(f"--weight is TERM=NUMBER like clip-vit-b16/text=0.5, got {w!r}"))
    return weights


@app.command()
def stage1(
    ctx: typer.Context,
    out: Out,
    cache: RunCache = None,
    model: Annotated[str, typer.Option(help="Point-MAE preset: tiny (CPU) or base (12 x 384, the paper's).")] = "tiny",
    steps: Steps = 300,
    batch_size: BatchSize = 32,
    lr: Lr = 1e-3,
    weight_decay: float = 0.05,
    warmup_steps: int = 20,
    grad_clip: float = 1.0,
    num_points: Points = 1024,
    sampling: Annotated[str, typer.Option(help="random or fps subsampling of the cached points.")] = "random",
    workers: Workers = 2,
    seed: int = 0,
    ckpt_every: CkptEvery = 100,
    log_every: int = 10,
    weight: Annotated[Optional[list[str]], typer.Option(
        help="Term weight, e.g. clip-vit-b16/text=1.0 (repeat); the terms are the cache's.")] = None,
    precision: Precision = "auto",
    val_split: ValSplit = None,
    val_cache: ValCache = None,
    val_every: ValEvery = None,
    config: RunConfig = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    stop_at: StopAt = None,
    progress: Progress = True,
) -> None:
    """Stage-1: align a Point-MAE student with every teacher in the cache (symmetric InfoNCE)."""
    from train.stages.stage1 import Stage1Config, train_stage1

    values = dict(cache=cache, out=out, model=model, steps=steps, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip, num_points=num_points,
                  sampling=sampling, workers=workers, seed=seed, ckpt_every=ckpt_every, log_every=log_every,
                  precision=precision, overwrite=overwrite, term_weights=_term_weights(weight),
                  val_split=val_split, val_cache=val_cache, val_every=val_every)
    cfg = _run_config(ctx, Stage1Config, "stage1", values, config, {"term_weights": ("weight",)})
    _train(lambda: train_stage1(cfg, resume=resume, progress=progress, stop_at=stop_at), out)


@app.command()
def stage2(
    ctx: typer.Context,
    out: Out,
    cache: RunCache = None,
    teacher: Annotated[Optional[str], typer.Option(
        help="Stage-1 checkpoint: the frozen teacher and the initialisation (required unless --config gives it).")]
    = None,
    steps: Steps = 300,
    batch_size: BatchSize = 32,
    lr: Lr = 5e-4,
    weight_decay: float = 0.05,
    warmup_steps: int = 20,
    grad_clip: float = 1.0,
    num_points: Points = 1024,
    workers: Workers = 2,
    seed: int = 0,
    mask_ratio: Annotated[float, typer.Option(help="Share of patches hidden from the encoder.")] = 0.6,
    shuffle: Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Token shuffling before the local decoder.")]
    = True,
    local: Annotated[bool, typer.Option("--local/--no-local", help="Local (per-token) distillation, eq. 4.")] = True,
    use_global: Annotated[bool, typer.Option("--global/--no-global", help="Global distillation, eq. 5.")] = True,
    target: Annotated[str, typer.Option(help="features (stage-1 tokens) or points (Point-MAE Chamfer "
                                             "reconstruction, the Table 8 baseline).")] = "features",
    init: Annotated[str, typer.Option(help="ckpt (from --teacher) or random (the Table 9 baseline).")] = "ckpt",
    teacher_source: Annotated[str, typer.Option(help="model: run the frozen teacher every step; cache: stream the "
                                                     "features `train export-teacher` stored.")] = "model",
    decoder_depth: Annotated[int, typer.Option(help="Transformer blocks of each decoder.")] = 2,
    encoder_lr_scale: Annotated[Optional[float], typer.Option(
        help="The encoder's learning rate as a share of --lr (the new decoders get --lr), so that their first, "
             "random gradients do not undo stage-1. Default: 0.1 with --init ckpt, 1 with --init random.")] = None,
    ckpt_every: CkptEvery = 100,
    log_every: int = 10,
    precision: Precision = "auto",
    val_split: ValSplit = None,
    val_cache: ValCache = None,
    val_every: ValEvery = None,
    config: RunConfig = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    stop_at: StopAt = None,
    progress: Progress = True,
) -> None:
    """Stage-2: masked point modelling that distils the frozen stage-1 model's token and global features."""
    from train.stages.stage2 import Stage2Config, train_stage2

    values = dict(cache=cache, out=out, teacher=teacher, steps=steps, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, warmup_steps=warmup_steps, grad_clip=grad_clip, num_points=num_points,
                  workers=workers, seed=seed, mask_ratio=mask_ratio, shuffle=shuffle, local=local,
                  use_global=use_global, target=target, init=init, teacher_source=teacher_source,
                  decoder_depth=decoder_depth, encoder_lr_scale=encoder_lr_scale, ckpt_every=ckpt_every,
                  log_every=log_every, precision=precision, overwrite=overwrite, val_split=val_split,
                  val_cache=val_cache, val_every=val_every)
    cfg = _run_config(ctx, Stage2Config, "stage2", values, config)
    _train(lambda: train_stage2(cfg, resume=resume, progress=progress, stop_at=stop_at), out)


@app.command("export-teacher")
def export_teacher(
    ckpt: Annotated[str, typer.Option(help="Stage-1 checkpoint whose features to store.")],
    cache: Cache,
    num_points: Points = 1024,
    batch_size: int = 64,
    progress: Progress = True,
) -> None:
    """Store a stage-1 model's token and global features in an objects cache (for stage2 --teacher-source cache)."""
    from train.export_teacher import export_teacher as run_export

    try:
        typer.echo(run_export(ckpt, cache, num_points=num_points, batch_size=batch_size, progress=progress))
    except (CacheError, FileNotFoundError, ValueError) as e:
        _fail(e)


@app.command("report")
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
        _fail(e)
    typer.echo(f"wrote {png} and {page}")


def _fusion(ctx: typer.Context, mode: str, config: str | None, resume: bool, stop_at: int | None,
            progress: bool, **values) -> None:
    from train.stages.fusion import FusionRunConfig, train_fusion

    values["warmup_steps"] = min(10, values["steps"])
    cfg = _run_config(ctx, FusionRunConfig, f"fusion-{mode}", {**values, "mode": mode}, config,
                      {"weights": ("contrastive", "regression", "occupancy", "codebook"),
                       "warmup_steps": ("steps",)})
    out = cfg.out
    _train(lambda: train_fusion(cfg, resume=resume, progress=progress, stop_at=stop_at), out)


Frames = Annotated[int, typer.Option(help="Frames per step on each process.")]
Dim = Annotated[int, typer.Option(help="Backbone width (WaffleIron-style, per-point features).")]
Depth = Annotated[int, typer.Option(help="Backbone blocks (planes xy, xz, yz in turn).")]
Teacher2d = Annotated[Optional[str], typer.Option(help="Pair-feature teacher (default: the cache's only one).")]
MaxPoints = Annotated[Optional[int], typer.Option(help="Random points kept per frame and step (pairs follow).")]


@fusion_app.command("pretrain")
def fusion_pretrain(
    ctx: typer.Context, out: Out, cache: RunCache = None, steps: Steps = 200, batch_size: Frames = 2, lr: Lr = 2e-3,
    workers: Workers = 2,
    seed: int = 0, dim: Dim = 64, depth: Depth = 6, teacher: Teacher2d = None, max_points: MaxPoints = 16384,
    contrastive: Annotated[float, typer.Option(help="Weight of the 2D-3D InfoNCE over pairs (0: off).")] = 1.0,
    regression: Annotated[float, typer.Option(help="Weight of the ScaLR cosine regression (0: off).")] = 1.0,
    occupancy: Annotated[float, typer.Option(help="Weight of CMCR occupancy estimation (0: off).")] = 0.0,
    codebook: Annotated[float, typer.Option(help="Weight of the CMCR shared codebook (0: off).")] = 0.0,
    ckpt_every: CkptEvery = 50, log_every: int = 10, precision: Precision = "auto", val_split: ValSplit = None,
    val_cache: ValCache = None, val_every: ValEvery = None, config: RunConfig = None,
    overwrite: Overwrite = False, resume: Resume = False, stop_at: StopAt = None, progress: Progress = True,
) -> None:
    """Pre-train a LiDAR backbone on the cache's point-pixel pairs (no labels needed)."""
    _fusion(ctx, "pretrain", config, resume, stop_at, progress, cache=cache, out=out, steps=steps,
            batch_size=batch_size, lr=lr, workers=workers, seed=seed, dim=dim, depth=depth, ckpt_every=ckpt_every,
            log_every=log_every, precision=precision, overwrite=overwrite, teacher=teacher, max_points=max_points,
            val_split=val_split, val_cache=val_cache, val_every=val_every,
            weights={"contrastive": contrastive, "regression": regression, "occupancy": occupancy,
                     "codebook": codebook})


@fusion_app.command("finetune")
def fusion_finetune(
    ctx: typer.Context, out: Out, cache: RunCache = None,
    labels: Annotated[str, typer.Option(help="Share of labelled training frames: 1%, 10% or 100%.")] = "100%",
    init: Annotated[str, typer.Option(help="A `fusion pretrain` checkpoint, or random.")] = "random",
    consistency: Annotated[bool, typer.Option("--consistency/--no-consistency",
                                              help="Fused head + KL(fused || LiDAR-only) (xModel-KD).")] = True,
    steps: Steps = 200, batch_size: Frames = 2, lr: Lr = 2e-3, workers: Workers = 2, seed: int = 0,
    dim: Dim = 64, depth: Depth = 6, teacher: Teacher2d = None, max_points: MaxPoints = 16384,
    ckpt_every: CkptEvery = 50, log_every: int = 10, precision: Precision = "auto", val_split: ValSplit = None,
    val_cache: ValCache = None, val_every: ValEvery = None, config: RunConfig = None,
    overwrite: Overwrite = False, resume: Resume = False, stop_at: StopAt = None, progress: Progress = True,
) -> None:
    """Fine-tune for per-point segmentation on a share of the labelled frames."""
    _fusion(ctx, "finetune", config, resume, stop_at, progress, cache=cache, out=out, steps=steps,
            batch_size=batch_size, lr=lr, workers=workers, seed=seed, dim=dim, depth=depth, ckpt_every=ckpt_every,
            log_every=log_every, precision=precision, overwrite=overwrite, teacher=teacher, max_points=max_points,
            val_split=val_split, val_cache=val_cache, val_every=val_every,
            labels=labels, init=init, consistency=consistency)


@eval_app.command("seg")
def eval_seg(cache: Cache, ckpt: Annotated[str, typer.Option(help="A `fusion finetune` checkpoint.")],
             split: str = "val", json_out: Json = False) -> None:
    """LiDAR-only segmentation: mIoU, per-class IoU and accuracy (label 255 ignored)."""
    from train.stages.fusion import evaluate_seg

    try:
        result = {"eval": "seg", "ckpt": ckpt, "cache": cache, **evaluate_seg(ckpt, cache, split)}
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        _fail(e)
    typer.echo(json.dumps(result) if json_out else "\n".join(f"{k:>14}: {v}" for k, v in result.items()))


def _train(start, out: str) -> None:
    """Run a stage; bad input and a mismatched cache end with a message, not a traceback."""
    from train.loop import CacheMismatchError

    try:
        metrics = start()
    except (CacheError, CacheMismatchError, FileNotFoundError, ValueError) as e:
        _fail(e)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary line
        typer.echo(json.dumps({"run": out, **{k: round(v, 4) for k, v in metrics.items()}}))


def _evaluate(what: str, cache: str, ckpt: str, model: str, as_json: bool, **kwargs) -> None:
    from train import evaluate

    try:
        c = evaluate.open_for_eval(cache)
        student = evaluate.load_student(ckpt, c, model)
        result = getattr(evaluate, what)(student, c, **kwargs)
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        _fail(e)
    result = {"eval": what, "ckpt": ckpt, "cache": cache, **result}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo("\n".join(f"{k:>12}: {v}" for k, v in result.items()))


@eval_app.command("zeroshot")
def eval_zeroshot(cache: Cache, ckpt: Ckpt, split: str = "test", model: Preset = "tiny",
                  num_points: Points = 1024, json_out: Json = False) -> None:
    """Zero-shot classification through the text-teacher head: top-1 / top-5 against class prompts."""
    _evaluate("zeroshot", cache, ckpt, model, json_out, split=split, num_points=num_points)


@eval_app.command("linear")
def eval_linear(cache: Cache, ckpt: Ckpt, model: Preset = "tiny", num_points: Points = 1024,
                c: Annotated[float, typer.Option(help="SVM regularisation C.")] = 1.0, json_out: Json = False) -> None:
    """Linear probe: a linear SVM on frozen global features (train split), accuracy on the test split."""
    _evaluate("linear_probe", cache, ckpt, model, json_out, num_points=num_points, c=c)


@eval_app.command("fewshot")
def eval_fewshot(cache: Cache, ckpt: Ckpt, model: Preset = "tiny", n_way: int = 5, m_shot: int = 10,
                 draws: int = 10, num_points: Points = 1024, json_out: Json = False) -> None:
    """n-way m-shot linear SVMs over several random draws: mean and std accuracy."""
    _evaluate("fewshot", cache, ckpt, model, json_out, n_way=n_way, m_shot=m_shot, draws=draws,
              num_points=num_points)


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None, prog_name="train")
