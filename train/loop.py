"""The training loop every stage shares: stream, optimiser, schedule, AMP, DDP, logs, checkpoints, resume.

A stage is a :class:`Task`: it says which samples it streams, builds its
modules, and turns a batch into losses. The loop reads straight down: set the
position in the stream, fetch a batch (timed: data wait), the task's losses,
backward, clip, step, schedule, log, and checkpoint when due. Only rank 0 logs
and saves. ``resume`` continues from ``last.pt`` exactly (model, task state,
optimiser, scheduler, RNG, stream position).
"""

from __future__ import annotations

import contextlib
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
from train.data.objects import ObjectStream, StreamConfig
from train.distributed import close_distributed, init_distributed
from train.run_log import RunLog


@dataclass
class LoopConfig:
    """What every stage's run has: where, how long, how fast, how often to log and save."""

    cache: str
    out: str
    model: str = "tiny"
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float = 1.0
    num_points: int = 1024
    sampling: str = "random"
    workers: int = 2
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 10
    amp: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    """Linear warm-up, then cosine decay to zero (as a factor of ``cfg.lr``)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Task:
    """One stage's part of the loop (see Stage1Task, Stage2Task)."""

    stage: str = "?"

    def stream_config(self) -> StreamConfig:
        raise NotImplementedError

    def make_stream(self, cache: str, rank: int, world: int):
        """The dataset the loop iterates; it must offer ``set_position(epoch, batches_done, batch_size, workers)``."""
        return ObjectStream(cache, self.stream_config(), rank=rank, world_size=world)

    collate = None  # the DataLoader's collate_fn (None: PyTorch's default)

    def batch_samples(self, batch: dict) -> int:
        return len(batch["points"])

    def build(self, stream: ObjectStream, device: torch.device, rank: int, world: int) -> tuple[nn.Module, list]:
        """The module DDP wraps, and every trainable parameter (the module's and any other's), as a list of
        tensors or of AdamW parameter groups (a group's ``lr`` is scheduled like the base one)."""
        raise NotImplementedError

    def losses(self, ddp: nn.Module, batch: dict, device: torch.device, amp) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state(self) -> dict:
        """What a checkpoint holds besides the loop's part; ``model``, ``model_config`` and ``heads`` are what
        every ``train eval`` mode loads."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        raise NotImplementedError

    def log_metrics(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict:
        """Saved in ``config.json`` beside the checkpoints."""
        return {}


def run(cfg: LoopConfig, task: Task, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> dict:
    """Train (or resume) a run of ``task``; returns the last logged metrics.

    ``stop_at``: save ``last.pt`` and return after that step (a time-boxed or
    preemptible job); ``resume`` later continues as if never stopped.
    """
    dist_info = init_distributed()
    device, rank, world = dist_info.device, dist_info.rank, dist_info.world_size
    cache = open_cache(cfg.cache)
    identity = cache_identity(cache)
    last_path = os.path.join(cfg.out, "last.pt")
    state = None
    if resume:
        state = checkpoint.load(last_path)
        check_same_cache(state["cache"], identity, cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    torch.manual_seed(cfg.seed)
    stream = task.make_stream(cfg.cache, rank, world)
    module, params = task.build(stream, device, rank, world)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    flat_params = [p for g in optimizer.param_groups for p in g["params"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg))
    step, epoch, batches_done = 0, 0, 0
    if state is not None:
        task.load_state(state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, batches_done = state["step"], state["data"]["epoch"], state["data"]["batches_done"]
        checkpoint.set_rng_state(state["rng"])
    ddp = DistributedDataParallel(module) if world > 1 else module
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda" else None
    log = RunLog(cfg.out, enabled=dist_info.is_main)
    if dist_info.is_main:
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump({"stage": task.stage, "config": cfg.to_dict(), **task.describe(), "cache": identity,
                       "world_size": world}, f, indent=2)

    def save(path: str) -> None:
        if dist_info.is_main:
            checkpoint.save(path, {
                "stage": task.stage, **task.state(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step,
                "data": {"epoch": epoch, "batches_done": batches_done, "seed": cfg.seed},
                "rng": checkpoint.rng_state(), "config": cfg.to_dict(), "cache": identity})

    bar = tqdm(total=cfg.steps, initial=step, desc=task.stage, unit="step",
               disable=not (progress and dist_info.is_main),
               mininterval=0.1 if sys.stderr.isatty() else 30.0)  # a line per 30 s in log files
    window: dict[str, Any] = {"wait": 0.0, "time": 0.0, "samples": 0, "steps": 0, "loss": {}}
    metrics: dict = {}
    module.train()
    end = min(cfg.steps, stop_at or cfg.steps)
    while step < end:
        stream.set_position(epoch, batches_done, cfg.batch_size, cfg.workers)
        # the loader's own generator: creating an iterator must not draw from the global RNG, or a resumed run
        # (a new iterator mid-epoch) would mask and drop differently from the uninterrupted one
        batches = iter(DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers, drop_last=True,
                                  collate_fn=task.collate, generator=torch.Generator().manual_seed(cfg.seed + epoch)))
        batches_this_epoch = 0
        while step < end:
            t0 = time.perf_counter()
            batch = next(batches, None)
            wait = time.perf_counter() - t0
            if batch is None:
                break
            losses = task.losses(ddp, batch, device, amp if amp is not None else contextlib.nullcontext())
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(flat_params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step, batches_done, batches_this_epoch = step + 1, batches_done + 1, batches_this_epoch + 1
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
            if step % cfg.ckpt_every == 0 or step == end:
                save(last_path)
        else:
            break
        if batches_this_epoch == 0 and batches_done == 0:
            raise ValueError(f"{cfg.cache}: the {stream.config.split!r} split gives no full batch of "
                             f"{cfg.batch_size} per DataLoader worker; lower --batch-size or --workers")
        epoch, batches_done = epoch + 1, 0
    bar.close()
    log.close()
    if dist_info.is_main and step == cfg.steps:
        shutil.copyfile(last_path, os.path.join(cfg.out, "best.pt"))  # no validation split yet: best = last
    close_distributed()
    return metrics
