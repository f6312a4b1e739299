"""Stage-1: multi-teacher contrastive alignment of a point-encoder student (MMPD, Section 3.1).

    train stage1 --cache caches/demo.zarr --out runs/s1                       # one process
    torchrun --nproc_per_node=2 -m train stage1 --cache ... --out runs/s1     # DDP on one node
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-endpoint=head:29500 -m train stage1 ...

Per step: the student embeds the batch's points, one head per teacher, and the
loss is the symmetric InfoNCE of every term (equations 1-3) with a learnable
temperature each; the loop (``train/loop.py``) does everything else.

``--text-supervision`` chooses the text target (the paper's Table 2): a random
one of the shape's cached captions per step (``captions``), always its first,
top-ranked caption (``top1``), or its class's prompt-template embedding
(``templates``: category names, the table's "manual captions"). ``--init``
starts the encoder from any file holding one (the paper's Table 9 "Stage-2 ->
Stage-1": a masked-modelling run first); the heads always start fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from train.data.objects import TEXT_SUPERVISIONS, StreamConfig
from train.encoder_io import INIT_HELP, start_from
from train.eval.frozen import validate_student
from train.loop import (
    ENCODERS_HELP,
    CacheMismatchError,
    PointCloudRunConfig,
    Task,
    cache_identity,
    check_same_cache,
    lr_at,
    run,
)
from train.losses import MultiTeacherLoss
from train.models.encoders import PointEncoder, create_encoder, encoder_config, recipe_overrides
from train.models.student import Student
from train.optim import clamp_logit_scales
from train.settings import format_weights, parse_weights, setting

__all__ = ["CacheMismatchError", "Stage1Config", "Stage1Task", "cache_identity", "check_same_cache", "initial_encoder",
           "lr_at", "train_stage1"]

DEFAULT_MODEL = "point-mae-tiny"


@dataclass
class Stage1Config(PointCloudRunConfig):
    term_weights: dict[str, float] = setting(
        help="Term weight, e.g. clip-vit-b16/text=1.0 (repeat); the terms are the cache's.", factory=dict,
        flags=("--weight",), cli_type=Optional[list[str]], from_cli=parse_weights, to_cli=format_weights)
    text_supervision: str = setting(
        "captions", "Text target of a shape: captions (a random one of its cached captions each time), top1 (always "
                    "its first caption, the cache's top-ranked) or templates (its class's prompt-template embedding, "
                    "class_text: the category name, Table 2's manual captions).", choices=TEXT_SUPERVISIONS)
    init: str = setting("random", f"{INIT_HELP} Its encoder config is the run's; the heads start fresh.")
    model: str | None = setting(None, f"Encoder of a new model (--init random): {ENCODERS_HELP} [unset: "
                                      f"{DEFAULT_MODEL}; with --init the file's, which a given --model must match].")


class Stage1Objective(nn.Module):
    """The student and its loss (with the learnable temperatures): one module, so DDP averages every gradient."""

    def __init__(self, student: Student, loss_fn: MultiTeacherLoss, head_of: dict[str, str]) -> None:
        super().__init__()
        self.student, self.loss_fn, self.head_of = student, loss_fn, head_of

    def forward(self, points: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.loss_fn(self.student(points), targets, self.head_of)


class Stage1Task(Task):
    stage = "stage1"

    def __init__(self, cfg: Stage1Config) -> None:
        self.cfg = cfg

    def stream_config(self) -> StreamConfig:
        return StreamConfig(num_points=self.cfg.num_points, sampling=self.cfg.sampling, seed=self.cfg.seed,
                            text_supervision=self.cfg.text_supervision)

    def build(self, stream, device, rank, world):
        unknown = sorted(set(self.cfg.term_weights) - set(stream.terms))
        if unknown:
            raise ValueError(f"--weight names no term of {self.cfg.cache}: {', '.join(unknown)}; its terms are "
                             f"{', '.join(sorted(stream.terms))}")
        self.model = Student(initial_encoder(self.cfg), stream.head_dims)
        weights = {t: self.cfg.term_weights.get(t, 1.0) for t in stream.terms}
        self.loss_fn = MultiTeacherLoss(weights, rank, world)
        self.objective = Stage1Objective(self.model, self.loss_fn,
                                         {t: teacher for t, (teacher, _) in stream.terms.items()}).to(device)
        return self.objective

    def losses(self, ddp, batch, device, autocast) -> dict[str, torch.Tensor]:
        points = batch["points"].to(device, non_blocking=True)
        targets = {t: batch[t].to(device, non_blocking=True) for t in self.objective.head_of}
        with autocast:
            return ddp(points, targets)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "loss": self.loss_fn.state_dict(),
                "encoder": self.model.encoder.describe(),
                "heads": {n: h.proj.out_features for n, h in self.model.heads.items()}}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])

    def after_step(self) -> None:
        clamp_logit_scales(self.loss_fn)  # bounded as parameters, not inside the loss (see train.optim)

    def log_metrics(self) -> dict[str, float]:
        return {"global_batch": self.loss_fn.global_batch,
                **{f"temperature/{k}": 1 / float(p.detach().exp()) for k, p in self.loss_fn.logit_scales.items()}}

    def describe(self) -> dict:
        return {"encoder": self.model.encoder.describe(), "text_supervision": self.cfg.text_supervision,
                "init": self.cfg.init}

    def validate(self, url: str, split: str) -> dict[str, float]:
        return validate_student(self.model, url, split, self.cfg.num_points, prefer="zeroshot")


def initial_encoder(cfg: Stage1Config) -> PointEncoder:
    """The encoder a run starts from: a new ``--model`` (after the family's pre-training recipe), or the encoder of
    ``--init`` with its weights and config (the load report printed as every ``--init`` prints it). A ``--model``
    given with ``--init`` must name the file's encoder: a one-line error otherwise, not a silent choice."""
    if cfg.init == "random":
        return create_encoder(cfg.model or DEFAULT_MODEL, "pretrain")
    encoder = start_from(cfg.init, "--init", "pretrain")
    if cfg.model:
        family = encoder_config(cfg.model)[0]
        expected = {"name": family.family,
                    "config": encoder_config(cfg.model, **recipe_overrides(family, "pretrain"))[1].to_dict()}
        found = encoder.describe()
        if expected != found:
            differ = ([f"family {found['name']}"] if found["name"] != expected["name"] else
                      [f"{k} {v}" for k, v in sorted(found["config"].items()) if expected["config"].get(k) != v])
            raise ValueError(f"--model {cfg.model} does not match the encoder of --init {cfg.init} "
                             f"({', '.join(differ)}); leave --model unset to take the file's")
    return encoder


def train_stage1(cfg: Stage1Config, resume: bool = False, progress: bool = True,
                 stop_at: int | None = None) -> dict:
    """Train (or resume) a stage-1 run; returns the last logged metrics."""
    return run(cfg, Stage1Task(cfg), resume, progress, stop_at)
