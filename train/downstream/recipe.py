"""What the downstream tasks share: settings filled from a published recipe, runs counted in epochs, the encoder
to start from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from train.data.augment import AUGMENTATIONS
from train.data.objects import SAMPLINGS
from train.encoder_io import encoder_state, start_from
from train.loop import PointCloudRunConfig, Task
from train.models.encoders import FAMILIES, PointEncoder, create_encoder, encoder_config


@dataclass
class RecipeConfig(PointCloudRunConfig):
    """A downstream run; ``None`` settings come from the task's recipe (:meth:`filled`)."""

    init: str = "random"  # a checkpoint of this tool, an exported encoder, a released one, or "random"
    epochs: int | None = None
    warmup_epochs: int | None = None
    augmentation: str | None = None
    num_group: int | None = None  # unset: the family's recipe, else the preset's or the checkpoint's
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

    def family(self) -> type[PointEncoder]:
        """The encoder family the run starts from: ``--model`` with ``--init random``, else the init file's."""
        if self.init == "random":
            return encoder_config(self.model)[0]
        return FAMILIES[encoder_state(self.init)[0]["name"]]

    def filled(self, settings: dict, family_recipe: str, **changes):
        """A copy with every ``None`` setting from the recipe's ``settings``, the encoder family's own recipe
        ``family_recipe`` on top (e.g. Point-M2AE's label smoothing), and ``changes``; checked."""
        own = {k: v for k, v in self.family().recipes.get(family_recipe, {}).items() if k != "encoder"}
        settings = {**settings, **own}
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


def build_encoder(cfg: RecipeConfig, recipe: str | None = None) -> PointEncoder:
    """The encoder to start from: pre-trained weights or a random one, with the settings no weight depends on
    (grouping, pooling, drop path) from the family's ``recipe`` and then the run's options. What the init file
    lacks (a fresh cls token) or holds besides the encoder (a head, a decoder) is printed, once."""
    overrides = {k: getattr(cfg, k) for k in ("num_group", "group_size", "drop_path_rate")
                 if getattr(cfg, k) is not None}
    if cfg.init == "random":
        return create_encoder(cfg.model, recipe, **overrides)
    return start_from(cfg.init, "--init", recipe, **overrides)
