"""Stage-2: masked point modelling with local/global distillation from the frozen stage-1 model (MMPD 3.2).

    train stage2 --cache caches/demo.zarr --teacher runs/s1/last.pt --out runs/s2
    train export-teacher --ckpt runs/s1/last.pt --cache caches/demo.zarr     # then --teacher-source cache

The student starts from the stage-1 checkpoint (``--init random``: from
scratch, the paper's Table 9 baseline); a frozen copy of the stage-1 encoder
gives the targets, computed per step from the same patches the student sees,
or streamed from features exported into the cache. The stage-1 heads ride
along untrained, so ``train eval zeroshot`` still works through the text head.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from train import checkpoint
from train.data.objects import StreamConfig
from train.encoder_io import start_from
from train.eval.frozen import validate_student
from train.loop import PointCloudRunConfig, Task, run
from train.models.encoders import PointEncoder, encoder_from_record
from train.models.encoders.base import Encoded, Patches
from train.models.masked_distillation import MaskedDistillation, MaskedDistillationConfig
from train.models.student import Student
from train.settings import setting


@dataclass
class Stage2Config(PointCloudRunConfig):
    teacher: str | None = setting(None, "Stage-1 checkpoint: the frozen teacher and the initialisation (required "
                                        "unless --config gives it).")
    init: str = setting("ckpt", "ckpt (from --teacher) or random (the Table 9 baseline).", choices=("ckpt", "random"))
    teacher_source: str = setting("model", "model: run the frozen teacher every step; cache: stream the features "
                                           "`train export-teacher` stored.", choices=("model", "cache"))
    mask_ratio: float | None = setting(None, "Share of the encoder's output tokens hidden from it. Default: the "
                                             "encoder family's own (Point-MAE 0.6 of its patches; Point-M2AE 0.8 of "
                                             "its coarsest scale).", check="share")
    shuffle: bool = setting(True, "Token shuffling before the local decoder.", flags=("--shuffle/--no-shuffle",))
    local: bool = setting(True, "Local (per-token) distillation, eq. 4.", flags=("--local/--no-local",))
    use_global: bool = setting(True, "Global distillation, eq. 5.", flags=("--global/--no-global",))
    target: str = setting("features", "What the masked tokens predict: features (the stage-1 tokens) or points (the "
                                      "encoder family's own masked point reconstruction, Chamfer-L2: the Table 8 "
                                      "baseline).", choices=("features", "points"),
                          flags=("--local-target", "--target"))
    decoder_depth: int = setting(2, "Transformer blocks of each decoder (each stage of Point-M2AE's points decoder; "
                                    "the official reconstruction: 4 Point-MAE, 1 Point-M2AE).", check="non-negative")
    lr: float = setting(5e-4, "Peak AdamW learning rate.", check="positive")
    encoder_lr_scale: float | None = setting(
        None, "The encoder's learning rate as a share of --lr (the new decoders get --lr), so that their first, "
              "random gradients do not undo stage-1. Default: 0.1 with --init ckpt, 1 with --init random.",
        check="non-negative")
    not_options = ("model",)  # the encoder is the teacher's

    def __post_init__(self) -> None:
        if self.encoder_lr_scale is None:
            self.encoder_lr_scale = self.default_encoder_lr_scale(self.init)

    @staticmethod
    def default_encoder_lr_scale(init: str) -> float:
        return 0.1 if init == "ckpt" else 1.0

    @classmethod
    def from_saved(cls, settings: dict) -> dict:
        """The encoder's lr scale is derived from ``init`` unless it was chosen."""
        if settings.get("encoder_lr_scale") == cls.default_encoder_lr_scale(settings.get("init", "ckpt")):
            settings["encoder_lr_scale"] = None
        return settings
    def distillation(self, default_mask_ratio: float) -> MaskedDistillationConfig:
        ratio = default_mask_ratio if self.mask_ratio is None else self.mask_ratio
        return MaskedDistillationConfig(ratio, self.shuffle, self.local, self.use_global, self.target,
                                        self.decoder_depth)


class FrozenTeacher(nn.Module):
    """The stage-1 encoder, frozen: no gradients, always in eval mode (asking for train mode is an error)."""

    def __init__(self, encoder: PointEncoder) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        if mode:
            raise RuntimeError("the stage-2 teacher is frozen: it stays in eval mode")
        return super().train(False)

    @torch.no_grad()
    def forward(self, patches: Patches) -> Encoded:
        return self.encoder.encode(patches)


def stage1_fingerprint(state: dict) -> str:
    """A short hash of a stage-1 model's encoder weights: names its exported features in a cache."""
    h = hashlib.sha256()
    for name, t in sorted(state["model"].items()):
        if name.startswith("encoder."):
            h.update(name.encode())
            h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def load_stage1(path: str) -> tuple[dict, Student]:
    """A stage-1 checkpoint's record and student; an encoder from outside this tool's runs (an exported
    ``.safetensors``, a released Point-MAE / Point-M2AE checkpoint) as a student without heads."""
    obj = None if path.endswith(".safetensors") else checkpoint.read(path)
    if isinstance(obj, dict) and "stage" in obj:
        state = checkpoint.check_stage(obj, path, "stage1")  # another stage's run is refused, not guessed at
    else:
        encoder = start_from(path, "--teacher", "pretrain")
        state = {"model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, "heads": {},
                 "encoder": encoder.describe()}
    model = Student(encoder_from_record(checkpoint.encoder_record(state)), state["heads"])
    model.load_state_dict(state["model"])
    return state, model


class Stage2Task(Task):
    stage = "stage2"

    def __init__(self, cfg: Stage2Config) -> None:
        if not cfg.teacher:
            raise ValueError("stage-2 needs --teacher: a stage-1 checkpoint")
        cfg.validate()
        if cfg.target == "features" and not (cfg.local or cfg.use_global):
            raise ValueError("--no-local and --no-global together leave nothing to learn")
        if cfg.target == "points" and not cfg.local:  # the reconstruction is the local term: --no-local dropped it
            raise ValueError("--local-target points replaces the local term, which --no-local turns off; drop one of "
                             "them")
        self.cfg = cfg
        self.teacher_state, teacher_model = load_stage1(cfg.teacher)
        self.teacher = FrozenTeacher(teacher_model.encoder)
        self.teacher_name = f"stage1-{stage1_fingerprint(self.teacher_state)}"

    def stream_config(self) -> StreamConfig:
        if self.cfg.teacher_source == "cache":  # the exported input: first N points, no augmentation
            return StreamConfig(num_points=self.cfg.num_points, sampling="first", augment=False, seed=self.cfg.seed,
                                teacher_features=self.teacher_name, contrastive=False)
        return StreamConfig(num_points=self.cfg.num_points, sampling=self.cfg.sampling, seed=self.cfg.seed,
                            contrastive=False)

    def build(self, stream, device, rank, world):
        if self.cfg.teacher_source == "cache" and self.teacher_name not in open_teachers(self.cfg.cache):
            raise ValueError(f"{self.cfg.cache} has no exported features {self.teacher_name!r} of {self.cfg.teacher}; "
                             f"run `train export-teacher --ckpt {self.cfg.teacher} --cache {self.cfg.cache}` first")
        student = Student(encoder_from_record(checkpoint.encoder_record(self.teacher_state)),
                          self.teacher_state["heads"])
        if self.cfg.init == "ckpt":
            student.load_state_dict(self.teacher_state["model"])
        student.heads.requires_grad_(False)  # carried over for zero-shot, not trained here
        encoder = student.encoder
        self.module = MaskedDistillation(student, self.cfg.distillation(encoder.default_mask_ratio),
                                         encoder.token_dim, encoder.global_dim).to(device)
        self.teacher = self.teacher.to(device)
        return self.module

    def lr_scale(self, name: str) -> float:
        # a trained encoder learns slower than the new decoders, so their first, random gradients do not undo it
        return self.cfg.encoder_lr_scale if name.startswith("student.") else 1.0

    def losses(self, ddp, batch, device, autocast) -> dict[str, torch.Tensor]:
        if self.teacher.training or any(p.requires_grad for p in self.teacher.parameters()):
            raise RuntimeError("the stage-2 teacher must stay frozen and in eval mode")
        points = batch["points"].to(device, non_blocking=True)
        with autocast:
            patches = self.module.student.encoder.tokenize(points)
            tokens = glob = None
            if self.cfg.teacher_source == "cache" and self.cfg.target == "features":
                tokens = batch[f"{self.teacher_name}/tokens"].to(device)
                glob = batch[f"{self.teacher_name}/global"].to(device)
            elif self.cfg.target == "features" or self.cfg.use_global:
                taught = self.teacher(patches)
                tokens, glob = taught.tokens, taught.global_feature
            out = ddp(patches, tokens, glob)
        return out

    def state(self) -> dict:
        return {**distillation_state(self.module), "teacher": {"ckpt": self.cfg.teacher, "name": self.teacher_name}}

    def load_state(self, state: dict) -> None:
        load_distillation_state(self.module, state)

    def validate(self, url: str, split: str) -> dict[str, float]:
        return validate_student(self.module.student, url, split, self.cfg.num_points, prefer="linear")

    def describe(self) -> dict:
        return {"encoder": self.module.student.encoder.describe(),
                "teacher": {"ckpt": self.cfg.teacher, "name": self.teacher_name}}


def distillation_state(module: MaskedDistillation) -> dict:
    """A masked-modelling run's checkpoint part: the student as every encoder tool reads it (``model``, ``encoder``,
    ``heads``) and the decoders apart, so ``--init`` finds an encoder checkpoint like any other."""
    student = module.student
    return {"model": student.state_dict(), "encoder": student.encoder.describe(),
            "heads": {n: h.proj.out_features for n, h in student.heads.items()},
            "decoders": {k: v for k, v in module.state_dict().items() if not k.startswith("student.")}}


def load_distillation_state(module: MaskedDistillation, state: dict) -> None:
    module.load_state_dict({**{f"student.{k}": v for k, v in state["model"].items()}, **state["decoders"]})


def open_teachers(url: str) -> set[str]:
    from cache_schema import open_cache

    return set(open_cache(url).teachers)


def train_stage2(cfg: Stage2Config, resume: bool = False, progress: bool = True,
                 stop_at: int | None = None) -> dict:
    """Train (or resume) a stage-2 run; returns the last logged metrics."""
    return run(cfg, Stage2Task(cfg), resume, progress, stop_at)
