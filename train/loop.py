"""The training loop every stage shares: stream, optimiser, schedule, AMP, DDP, logs, checkpoints, resume.

A stage is a :class:`Task`: it says which samples it streams, builds its
modules, and turns a batch into losses. The loop reads straight down: set the
position in the stream, fetch a batch (timed: data wait), the task's losses,
backward, clip, step, schedule, log, and checkpoint when due. Only rank 0 logs
and saves. ``resume`` continues from ``last.pt`` exactly (model, task state,
optimiser, scheduler, RNG, stream position). Every save also writes the run's
cost so far (``cost.json``, see :mod:`train.costs`); a resumed run adds to it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cache_schema import open_cache
from train import checkpoint
from train.costs import CostClock, parameter_counts, previous_cost, started_from
from train.data.objects import ObjectStream, StreamConfig
from train.data.transport import keep_packed
from train.distributed import close_distributed, init_distributed
from train.optim import param_groups
from train.precision import PRECISIONS, resolve_precision
from train.run_log import RunLog
from train.settings import check_settings, setting

ENCODERS_HELP = ("point-mae-tiny (CPU), point-mae (the official 12 x 384), point-m2ae-tiny (CPU) or point-m2ae (the "
                 "official multi-scale encoder, the paper's best rows); tiny and base are point-mae-tiny and point-mae")


@dataclass
class LoopConfig:
    """What every stage's run has: where, how long, how fast, how often to log and save."""

    cache: str = setting(help="Cache path or fsspec URL (required unless --config gives it).")
    out: str = setting(help="Run directory (checkpoints, metrics.csv, tensorboard/, config.json).")
    steps: int = setting(300, "Optimiser steps.", check="positive")
    batch_size: int = setting(32, "Samples per step on each process.", check="positive")
    lr: float = setting(1e-3, "Peak AdamW learning rate.", check="positive")
    weight_decay: float = setting(0.05, "AdamW weight decay (none on norms, biases and tokens).",
                                  check="non-negative")
    warmup_steps: int = setting(20, "Linear learning-rate warm-up steps (then cosine).", check="non-negative")
    grad_clip: float = setting(1.0, "Gradient norm clip.", check="positive")
    workers: int = setting(2, "DataLoader worker processes.", check="non-negative")
    seed: int = setting(0, "Seed of every random choice of the run.", check="non-negative")
    ckpt_every: int = setting(100, "Save last.pt every N steps (and at the end).", check="positive")
    log_every: int = setting(10, "Log the losses every N steps.", check="positive")
    precision: str = setting("auto", "fp32, bf16, fp16 (with loss scaling) or auto: bf16 on a GPU that has it, fp16 "
                                     "on older GPUs, fp32 on a CPU.", choices=PRECISIONS)
    val_split: str | None = setting(None, "Validate on this split every --val-every steps; best.pt is the best "
                                          "validated checkpoint (without validation there is no best.pt, only "
                                          "last.pt).")
    val_cache: str | None = setting(None, "The cache --val-split is in (default: --cache).")
    val_every: int | None = setting(None, "Steps between validations (default: --ckpt-every).", check="positive")
    overwrite: bool = setting(False, "Start afresh in a non-empty --out (its files are deleted).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, settings: dict) -> dict:
        """A saved run's settings (its ``config.json``) for a re-run: renamed where this version names them
        differently, and ``None`` where the run derived a value from others, so that it is derived again."""
        return settings

    def validate(self) -> None:
        """Every option checked at the boundary: a one-line error naming it."""
        check_settings(self)
        if self.val_cache and not self.val_split:
            raise ValueError("--val-cache needs --val-split: the split of that cache to validate on")


@dataclass
class PointCloudRunConfig(LoopConfig):
    """A run of a point encoder on an objects cache: which encoder, and how many points of each shape, how chosen."""

    model: str = setting("point-mae-tiny", f"Encoder of a new model: {ENCODERS_HELP}.")
    num_points: int = setting(1024, "Points per shape fed to the encoder.", check="positive")
    sampling: str = setting("random", "random or fps subsampling of the cached points.")
    samplings = ("random", "fps")  # class attribute, not a field: the --sampling values a stage accepts

    def validate(self) -> None:
        super().validate()
        if self.sampling not in self.samplings:
            raise ValueError(f"--sampling is one of {', '.join(self.samplings)}, got {self.sampling!r}")


SHORT_EPOCH = 4  # fewer batches per epoch than this many per worker: read in the main process


class CacheMismatchError(RuntimeError):
    """A run is resumed on a cache other than the one it was trained on."""


def cache_identity(cache) -> dict:
    return {"url": cache.loc.url, "schema_version": cache.attrs.schema_version, "fingerprint": cache.fingerprint,
            "teachers": {n: t.to_dict() for n, t in sorted(cache.teachers.items())}}


def check_same_cache(saved: dict, current: dict, run_dir: str) -> None:
    for key in ("schema_version", "fingerprint", "teachers"):
        if saved.get(key) != current.get(key):
            raise CacheMismatchError(
                f"run {run_dir} was trained on {saved.get('url')} ({key}: {_short(saved.get(key))}), but "
                f"{current['url']} has {key} {_short(current.get(key))}. Resume with the same cache, or start a "
                "new run directory.")


def _short(v) -> str:
    return str(sorted(v)) if isinstance(v, dict) else str(v)


def lr_at(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up, then cosine decay to zero at the last step (as a factor of ``cfg.lr``).

    A run with ``cosine_steps`` (the official masked-reconstruction recipes) follows timm's ``CosineLRScheduler``
    as they use it: the cosine counts from step 0, not from the end of the warm-up, and reaches zero at
    ``cosine_steps``, which may lie past the last step (Point-M2AE: set for 400 epochs, cut at 300)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    cosine_steps = getattr(cfg, "cosine_steps", None)
    if cosine_steps:
        progress = step / cosine_steps
    else:
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Task:
    """One stage's part of the loop (see Stage1Task, Stage2Task)."""

    stage: str = "?"  # its name in train.tasks.TASKS
    trained: nn.Module  # what build() returned: the module DDP wraps, set by the loop

    def stream_config(self) -> StreamConfig:
        raise NotImplementedError

    def make_stream(self, cache: str, rank: int, world: int):
        """The dataset the loop iterates: batches out, with ``set_position`` and ``batches_per_epoch``."""
        return ObjectStream(cache, self.stream_config(), rank=rank, world_size=world)

    def batch_samples(self, batch: dict) -> int:
        return len(batch["points"])

    def build(self, stream, device: torch.device, rank: int, world: int) -> nn.Module:
        """The module DDP wraps: it holds every trainable parameter, and every loss comes out of its forward
        (so DDP averages every gradient). Parameters a run does not train have ``requires_grad=False``."""
        raise NotImplementedError

    def lr_scale(self, name: str) -> float:
        """The learning rate of parameter ``name`` (of the built module) as a share of ``--lr``."""
        return 1.0

    def generators(self) -> dict[str, torch.Generator]:
        """The task's own random generators (seeded per rank, saved in checkpoints)."""
        return {}

    def losses(self, ddp: nn.Module, batch: dict, device: torch.device, autocast) -> dict[str, torch.Tensor]:
        """The losses of a batch, computed by calling ``ddp`` (inside ``autocast``)."""
        raise NotImplementedError

    def state(self) -> dict:
        """What a checkpoint holds besides the loop's part; ``model``, ``model_config`` and ``heads`` are what
        every ``train eval`` mode loads."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimiser step (e.g. to keep learnable temperatures in bounds)."""

    def log_metrics(self) -> dict[str, float]:
        return {}

    def validate(self, url: str, split: str) -> dict[str, float]:
        """Scores of the model as it is on a held-out split; ``score`` (higher is better) picks ``best.pt``."""
        raise NotImplementedError(f"{self.stage} has no validation")

    def describe(self) -> dict:
        """Saved in ``config.json`` beside the checkpoints."""
        return {}

    def schedule(self, cfg: LoopConfig, batches_per_epoch: int) -> LoopConfig:
        """The run's config once the epoch length is known (e.g. steps from epochs); by default as given."""
        return cfg


def shut_down(*parts: tuple[str, Any]) -> None:
    """Close every part in order; one that raises (workers that will not exit, a process group whose peer is
    gone) is one warning line on stderr, and the others are still closed."""
    for what, close in parts:
        try:
            close()
        except Exception as e:  # anything: the checkpoints are written, nothing here may fail the run
            print(f"warning: {what} did not shut down cleanly after the last checkpoint ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else 'no message'}); the run's files are complete",
                  file=sys.stderr)


def check_run_dir(cfg: LoopConfig, resume: bool) -> bool:
    """Whether ``--out`` holds something a new run must replace; refused without ``--overwrite``."""
    occupied = not resume and os.path.isdir(cfg.out) and bool(os.listdir(cfg.out))
    if occupied and not cfg.overwrite:
        raise ValueError(f"--out {cfg.out} is not empty; pass --resume to continue it, --overwrite to replace it, "
                         "or choose another folder")
    return occupied


def validated(csv_path: str, step: int) -> bool:
    """Whether ``validation.csv`` holds a validation of ``step``."""
    if not os.path.exists(csv_path):
        return False
    with open(csv_path, newline="") as f:
        return any(row.get("step") == str(step) for row in csv.DictReader(f))


def clear_run_dir(path: str) -> None:
    for name in os.listdir(path):
        full = os.path.join(path, name)
        shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)


def _rank_rng(task: Task) -> dict:
    """This rank's random state: the global generators and the task's own."""
    return {**checkpoint.rng_state(), "task": {k: g.get_state() for k, g in task.generators().items()}}


def _set_rank_rng(task: Task, state: dict) -> None:
    checkpoint.set_rng_state(state)
    for k, g in task.generators().items():
        g.set_state(state["task"][k])


def _loader_shape(stream, cfg: LoopConfig, task: Task, world: int, is_main: bool) -> tuple[int, int]:
    """DataLoader workers and batches per epoch; an epoch of a few batches is read in the main process."""
    workers = cfg.workers
    stream.set_position(0, 0, cfg.batch_size, drop_last=True, num_workers=workers)
    per_epoch = stream.batches_per_epoch()
    if workers and per_epoch < SHORT_EPOCH * workers:  # e.g. fine-tuning on 1% of the frames: a batch per epoch
        workers = 0
        stream.set_position(0, 0, cfg.batch_size, drop_last=True, num_workers=0)
        per_epoch = stream.batches_per_epoch()
        if is_main:
            print(f"{task.stage}: {per_epoch} batch(es) per epoch: reading in the main process, as loader workers "
                  "would stop and restart every few steps", file=sys.stderr)
    if per_epoch == 0:
        raise ValueError(f"{cfg.cache}: the {stream.config.split!r} split has {len(stream)} usable rows, not one "
                         f"batch of {cfg.batch_size} for each of {world} process(es); lower --batch-size")
    return workers, per_epoch


def run(cfg: LoopConfig, task: Task, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train (or resume) a run of ``task``; returns the last logged metrics.

    ``stop_at``: save ``last.pt`` and return after that step (a time-boxed or
    preemptible job); ``resume`` later continues as if never stopped.
    """
    cfg.validate()
    dist_info = init_distributed()
    device, rank, world = dist_info.device, dist_info.rank, dist_info.world_size
    precision = resolve_precision(cfg.precision, device)
    cache = open_cache(cfg.cache)
    identity = cache_identity(cache)
    last_path = os.path.join(cfg.out, "last.pt")
    state = None
    if resume:
        state = checkpoint.load(last_path, stage=task.stage)
        check_same_cache(state["cache"], identity, cfg.out)
    replace = dist_info.is_main and check_run_dir(cfg, resume)  # rank 0 alone: the others could see its files
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    stream = task.make_stream(cfg.cache, rank, world)
    workers, per_epoch = _loader_shape(stream, cfg, task, world, dist_info.is_main)
    cfg = task.schedule(cfg, per_epoch)  # e.g. fine-tuning: --epochs -> steps, validation every epoch
    module = task.trained = task.build(stream, device, rank, world)
    optimizer = torch.optim.AdamW(param_groups(module, cfg.lr, cfg.weight_decay, task.lr_scale), lr=cfg.lr)
    flat_params = [p for g in optimizer.param_groups for p in g["params"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg))
    scaler = precision.grad_scaler()
    step, epoch, batches_done = 0, 0, 0
    torch.manual_seed(cfg.seed + 1_000_003 * rank)  # masks, dropout, pair picks: different per rank
    for g in task.generators().values():
        g.manual_seed(cfg.seed + 1_000_003 * rank)
    if state is not None:
        task.load_state(state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # fp16 runs; older checkpoints have none
            scaler.load_state_dict(state["scaler"])
        step, epoch, batches_done = state["step"], state["data"]["epoch"], state["data"]["batches_done"]
        _set_rank_rng(task, state["rng"][rank % len(state["rng"])])
    clock = CostClock(task.stage, device, world, parameter_counts(module), started_from(task.stage, cfg.to_dict()),
                      previous_cost(cfg.out, state) if state is not None else None, step)
    if cfg.val_split is not None:  # before any folder is made: a validation that cannot run fails the start
        val_cache = open_cache(cfg.val_cache) if cfg.val_cache else cache
        if cfg.val_split not in val_cache.split_names:
            raise ValueError(f"--val-split {cfg.val_split!r}: {val_cache.loc.url} has the splits "
                             f"{', '.join(val_cache.split_names)}")
    stream.set_position(epoch, batches_done, cfg.batch_size, drop_last=True, num_workers=workers, continuous=True)
    if replace:
        clear_run_dir(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)  # only now: a failed start leaves no empty run folder, nor clears one
    ddp = DistributedDataParallel(module) if world > 1 else module
    log = RunLog(cfg.out, enabled=dist_info.is_main)
    val_log = RunLog(cfg.out, enabled=dist_info.is_main and cfg.val_split is not None, csv_name="validation.csv",
                     tensorboard=False)
    if dist_info.is_main:
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump({"stage": task.stage, "config": cfg.to_dict(), **task.describe(), "cache": identity,
                       "world_size": world, "precision": precision.name, "batches_per_epoch": per_epoch,
                       "loader_workers": workers}, f, indent=2)

    def save(path: str) -> None:
        rngs = [_rank_rng(task)]
        if world > 1:  # every rank's generators, so a resumed run draws exactly what this one would have
            rngs = [None] * world
            torch.distributed.all_gather_object(rngs, _rank_rng(task))
        if dist_info.is_main:
            checkpoint.save(path, {
                "stage": task.stage, **task.state(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "data": {"epoch": epoch, "batches_done": batches_done, "seed": cfg.seed},
                "rng": rngs, "config": cfg.to_dict(), "cache": identity, "world_size": world,
                "cost": clock.record(step)})
            clock.write(cfg.out, step)  # after the checkpoint: a resumed run finds the cost of its step

    val_every = cfg.val_every or cfg.ckpt_every

    def validation_due(at: int) -> bool:
        return cfg.val_split is not None and (at % val_every == 0 or at == cfg.steps)

    best_path, best_record = os.path.join(cfg.out, "best.pt"), os.path.join(cfg.out, "best.json")
    best = json.load(open(best_record)) if resume and os.path.exists(best_record) else None

    def validate() -> None:
        """On rank 0, after a save: score last.pt's model; keep it as best.pt if it beats the best so far."""
        nonlocal best
        module.eval()
        started = time.perf_counter()
        try:
            scores = task.validate(cfg.val_cache or cfg.cache, cfg.val_split)
        finally:
            module.train()
            clock.validation(time.perf_counter() - started)
        clock.write(cfg.out, step)
        val_log.log(step, scores)
        bar.write(f"step {step}: validation on {cfg.val_split!r}: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if best is None or scores["score"] > best["score"]:
            best = {"step": step, **scores}
            shutil.copyfile(last_path, best_path)
            with open(best_record, "w") as f:
                json.dump(best, f, indent=2)

    bar = tqdm(total=cfg.steps, initial=step, desc=task.stage, unit="step",
               disable=not (progress and dist_info.is_main),
               mininterval=0.1 if sys.stderr.isatty() else 30.0)  # a line per 30 s in log files
    if resume and dist_info.is_main and step > 0 and validation_due(step) and not validated(val_log.path, step):
        validate()  # the stopped run saved this step, then was killed before validating it
    window: dict[str, Any] = {"wait": 0.0, "time": 0.0, "samples": 0, "steps": 0, "loss": {}}
    metrics: dict = {}
    module.train()
    end = min(cfg.steps, stop_at or cfg.steps)
    batches = None  # the loader's iterator of the current epoch (a finished run resumed makes none)
    # workers assemble whole batches; persistent workers move on to the next epoch by themselves. The loader's
    # own generator: creating an iterator must not draw from the global RNG (a resumed run would mask differently)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(cfg.seed),
                        collate_fn=keep_packed)
    clock.start()  # training seconds: steps, data wait and saves; validation is timed apart
    while step < end:
        batches = iter(loader)
        epoch_done = False
        while step < end and not epoch_done:
            t0 = time.perf_counter()
            batch = next(batches)
            wait = time.perf_counter() - t0
            losses = task.losses(ddp, batch, device, precision.autocast())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:  # 0: none (the official masked-reconstruction recipes)
                torch.nn.utils.clip_grad_norm_(flat_params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            task.after_step()
            scheduler.step()
            step, batches_done = step + 1, batches_done + 1
            window["steps"] += 1
            window["wait"] += wait
            window["time"] += time.perf_counter() - t0
            window["samples"] += task.batch_samples(batch) * world
            for k, v in losses.items():
                window["loss"][k] = window["loss"].get(k, 0.0) + float(v.detach())
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = {**{f"loss/{k}": v / window["steps"] for k, v in window["loss"].items()},
                           "lr": max(scheduler.get_last_lr()), "samples_per_s": window["samples"] / window["time"],
                           "data_wait_pct": 100 * window["wait"] / window["time"], "epoch": epoch,
                           **task.log_metrics()}
                log.log(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss/total']:.3f}", sps=f"{metrics['samples_per_s']:.0f}",
                                wait=f"{metrics['data_wait_pct']:.1f}%", refresh=False)
                window = {"wait": 0.0, "time": 0.0, "samples": 0, "steps": 0, "loss": {}}
            bar.update(1)
            if batches_done == per_epoch:  # every rank ends its epoch here, together
                epoch, batches_done, epoch_done = epoch + 1, 0, True
            due_val = validation_due(step)
            if step % cfg.ckpt_every == 0 or step == end or due_val:
                save(last_path)  # every rank: the save gathers their random states
            if due_val and dist_info.is_main:
                validate()
    if dist_info.is_main:
        clock.write(cfg.out, step)
    # the run's files are complete here: a part that fails to shut down costs a warning, not the run
    shut_down(("the progress bar", bar.close), ("the metric logs", log.close),
              ("the data loader's workers", getattr(batches, "_shutdown_workers", lambda: None)),
              ("the stream", stream.close), ("the process group", close_distributed))
    if best is not None:
        metrics = {**metrics, **{f"best/{k}": v for k, v in best.items()}}
    return metrics
