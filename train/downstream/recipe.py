"""What the downstream tasks share: settings filled from a published recipe, runs counted in epochs, the encoder
to start from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from train.data.augment import AUGMENTATIONS
from train.data.objects import SAMPLINGS
from train.encoder_io import INIT_HELP, encoder_state, start_from
from train.loop import ENCODERS_HELP, PointCloudRunConfig, Task
from train.models.encoders import FAMILIES, PointEncoder, create_encoder, encoder_config
from train.settings import check_settings, setting


@dataclass
class RecipeConfig(PointCloudRunConfig):
    """A downstream run; ``None`` settings come from the task's recipe (:meth:`filled`)."""

    init: str = setting("random", INIT_HELP)
    model: str = setting("point-mae-tiny", f"Encoder with --init random: {ENCODERS_HELP}.")
    epochs: int | None = setting(None, "Epochs.", check="positive")
    warmup_epochs: int | None = setting(None, "Linear warm-up epochs.", check="non-negative")
    augmentation: str | None = setting(None, f"Training augmentation: {', '.join(AUGMENTATIONS)}.",
                                       choices=tuple(AUGMENTATIONS))
    num_group: int | None = setting(None, "Patches per cloud [unset: the encoder family's recipe, else the "
                                          "checkpoint's].", check="positive")
    group_size: int | None = setting(None, "Points per patch [unset: as --num-group].", check="positive")
    drop_path_rate: float | None = setting(None, "Stochastic depth (drop path) rate, rising to this at the "
                                                 "encoder's last block.", check="fraction")
    # the loop's settings the recipe decides unless given
    batch_size: int | None = setting(None, "Shapes per step on each process.", check="positive")  # type: ignore
    lr: float | None = setting(None, "Peak AdamW learning rate.", check="positive")  # type: ignore[assignment]
    weight_decay: float | None = setting(None, "AdamW weight decay.", check="non-negative")  # type: ignore
    grad_clip: float | None = setting(None, "Gradient norm clip.", check="positive")  # type: ignore[assignment]
    num_points: int | None = setting(None, "Points per shape.", check="positive")  # type: ignore[assignment]
    sampling: str = setting("prefix", "prefix (Point-MAE: N of the first 1.17 N stored points, random order), "
                                      "random, first or fps.")
    val_split: str | None = setting("test", "Validate on this split every epoch, keeping the best as best.pt (the "
                                            "published protocols validate on test).")
    samplings = SAMPLINGS  # every way the stream samples (fps too: part labels follow their points)
    not_options = ("steps", "warmup_steps", "ckpt_every", "val_every")  # counted in epochs: the run derives them
    recipe_table = {}  # type: ignore[var-annotated]  # the task's published settings (per recipe, if several)

    @classmethod
    def described_defaults(cls) -> dict[str, str]:
        """The recipe's value of every setting it decides, for the options' help: ``300``, or
        ``1024 modelnet40, 2048 scanobjectnn`` where the recipes differ."""
        tables = cls.recipe_table if all(isinstance(v, dict) for v in cls.recipe_table.values()) \
            else {"": cls.recipe_table}
        described = {}
        for name in {k for table in tables.values() for k in table}:
            values = {recipe: table.get(name) for recipe, table in tables.items()}
            if len(set(map(str, values.values()))) == 1:
                described[name] = str(next(iter(values.values())))
            else:
                described[name] = ", ".join(f"{v} {recipe}" for recipe, v in values.items())
        return described

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
        check_settings(cfg)
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
