"""AdamW parameter groups and the temperature bound, as open_clip and Point-MAE do them.

No weight decay on biases, norms, temperatures (anything with fewer than 2
dimensions) and on what a module names in its ``no_weight_decay()`` (timm's
convention: an encoder's cls token and position, a decoder's mask token):
decaying them pulls learned offsets and scales towards zero for no
regularising gain. No name of any model family is written here. A learnable logit scale is clamped as a
parameter after each step to [0, ln 100] (temperature >= 0.01), not inside
forward, where a clamp would cut its gradient at the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

MAX_LOGIT_SCALE = math.log(100)


def no_decay_names(module: nn.Module) -> set[str]:
    """Full names of the parameters the submodules of ``module`` list in their ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, m in module.named_modules():
        if callable(getattr(m, "no_weight_decay", None)):
            names |= {f"{prefix}.{n}" if prefix else n for n in m.no_weight_decay()}
    return names


def decays(name: str, p: torch.Tensor, no_decay: set[str] = frozenset()) -> bool:
    return p.ndim >= 2 and name not in no_decay


def param_groups(module: nn.Module, lr: float, weight_decay: float,
                 lr_scale: Callable[[str], float] = lambda name: 1.0) -> list[dict]:
    """AdamW groups of ``module``'s trainable parameters by (lr scale, decay or not); names kept for reports."""
    groups: dict[tuple[float, bool], dict] = {}
    no_decay = no_decay_names(module)
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        key = (lr_scale(name), decays(name, p, no_decay))
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
