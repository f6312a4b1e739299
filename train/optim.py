"""AdamW parameter groups and the temperature bound, as open_clip and Point-MAE do them.

No weight decay on biases, norms, temperatures, cls/mask tokens and
positional parameters (anything with fewer than 2 dimensions, or a token or
position by name): decaying them pulls learned offsets and scales towards
zero for no regularising gain. A learnable logit scale is clamped as a
parameter after each step to [0, ln 100] (temperature >= 0.01), not inside
forward, where a clamp would cut its gradient at the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

MAX_LOGIT_SCALE = math.log(100)
NO_DECAY_NAMES = ("token", "cls_pos", "logit_scale")


def decays(name: str, p: torch.Tensor) -> bool:
    return p.ndim >= 2 and not any(k in name for k in NO_DECAY_NAMES)


def param_groups(module: nn.Module, lr: float, weight_decay: float,
                 lr_scale: Callable[[str], float] = lambda name: 1.0) -> list[dict]:
    """AdamW groups of ``module``'s trainable parameters by (lr scale, decay or not); names kept for reports."""
    groups: dict[tuple[float, bool], dict] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        key = (lr_scale(name), decays(name, p))
        g = groups.setdefault(key, {"params": [], "names": [], "lr": lr * key[0],
                                    "weight_decay": weight_decay if key[1] else 0.0})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


@torch.no_grad()
def clamp_logit_scales(module: nn.Module) -> None:
    """Keep every learnable logit scale (log inverse temperature) within [0, ln 100]."""
    for name, p in module.named_parameters():
        if "logit_scale" in name:
            p.clamp_(0, MAX_LOGIT_SCALE)
