"""What the downstream tasks share: settings filled from a published recipe, runs counted in epochs, the encoder
to start from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from train.data.augment import AUGMENTATIONS
from train.data.objects import SAMPLINGS
from train.encoder_io import encoder_state
from train.loop import LoopConfig, Task
from train.models.point_mae import PointMAEConfig, PointMAEEncoder


@dataclass
class RecipeConfig(LoopConfig):
    """A downstream run; ``None`` settings come from the task's recipe (:meth:`filled`)."""

    init: str = "random"  # a stage-1 / stage-2 / downstream checkpoint, an exported encoder, or "random"
    epochs: int | None = None
    warmup_epochs: int | None = None
    augmentation: str | None = None
    num_group: int | None = None  # unset after the recipe: the preset's or the checkpoint's
    group_size: int | None = None
    drop_path_rate: float | None = None
    # the loop's settings the recipe decides unless given
    batch_size: int | None = None  # type: ignore[assignment]
    lr: float | None = None  # type: ignore[assignment]
    weight_decay: float | None = None  # type: ignore[assignment]
    grad_clip: float | None = None  # type: ignore[assignment]
    num_points: int | None = None  # type: ignore[assignment]
    sampling: str = "prefix"
    val_split: str | None = "test"  # the published protocols validate on test every epoch
    samplings = SAMPLINGS  # every way the stream samples (fps too: part labels follow their points)

    def filled(self, settings: dict, **changes):
        """A copy with every ``None`` setting from the recipe's ``settings`` (and ``changes``), checked."""
        cfg = dataclasses.replace(self, **changes, **{k: v for k, v in settings.items() if getattr(self, k) is None})
        if cfg.augmentation not in AUGMENTATIONS:
            raise ValueError(f"--augmentation is one of {', '.join(AUGMENTATIONS)}, got {cfg.augmentation!r}")
        if cfg.epochs <= 0 or cfg.warmup_epochs < 0:
            raise ValueError(f"--epochs must be positive and --warmup-epochs not negative, got {cfg.epochs} and "
                             f"{cfg.warmup_epochs}")
        return cfg


class EpochTask(Task):
    """A task whose run is written in epochs, as the recipes are: steps, warm-up, checkpoints and validation."""

    cfg: RecipeConfig

    def schedule(self, cfg: RecipeConfig, batches_per_epoch: int) -> RecipeConfig:
        self.cfg = dataclasses.replace(cfg, steps=cfg.epochs * batches_per_epoch,
                                       warmup_steps=cfg.warmup_epochs * batches_per_epoch,
                                       ckpt_every=batches_per_epoch, val_every=cfg.val_every or batches_per_epoch)
        return self.cfg


def build_encoder(cfg: RecipeConfig) -> PointMAEEncoder:
    """The encoder to start from: pre-trained weights (any grouping: no weight depends on it) or a random one."""
    grouping = {k: getattr(cfg, k) for k in ("num_group", "group_size", "drop_path_rate")
                if getattr(cfg, k) is not None}
    if cfg.init == "random":
        return PointMAEEncoder(PointMAEConfig.preset(cfg.model, **grouping))
    config, weights = encoder_state(cfg.init)
    encoder = PointMAEEncoder(dataclasses.replace(config, **grouping))
    encoder.load_state_dict(weights)
    return encoder
