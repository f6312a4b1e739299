"""The field's released checkpoints in and out: Point-MAE's and Point-M2AE's ``{'base_model': state}`` files.

Each family module maps its own names (timm's ``checkpoint_filter_fn`` idea) with five functions:
``official_kind(state) -> "pretrain" | "finetune" | None``, ``from_official(state) -> (ours, left_out)``,
``to_official(ours) -> theirs`` (the official fine-tuning model's encoder names),
``config_from_official(state, model_yaml) -> config`` (the weights' shapes, and the ``model:`` section of a
``.yaml`` beside the file when there is one: released weights do not record their head count) and
``official_yaml(config) -> dict`` (the official cfg's ``model:``).
Here: reading a file (``weights_only=True``: nothing in it runs), ``module.`` prefixes, telling which family a
file is from its keys, and writing a file the official fine-tuning code loads.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import torch
import yaml

from train.models.encoders import FAMILIES, PointEncoder

DESCRIPTIONS = {"point-mae": "Point-MAE (Pang-Yatian/Point-MAE: a pre-training state with MAE_encoder.* or a "
                             "PointTransformer fine-tuned state)",
                "point-m2ae": "Point-M2AE (ZrrSkywalker/Point-M2AE: a pre-training, fine-tuned or segmentation state)"}


class NotOfficialError(ValueError):
    """A file that is no released checkpoint of a registered family."""


def family_module(family: type[PointEncoder]) -> ModuleType:
    return sys.modules[family.__module__]


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataParallel / DDP saves ``module.<name>``; the official loaders strip it, so do we."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def official_state(obj, path: str) -> dict[str, torch.Tensor]:
    """The state dict inside a released file: ``{'base_model': state}`` (also ``model`` / ``state_dict``) or bare."""
    if isinstance(obj, dict):
        for key in ("base_model", "model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise NotOfficialError(f"{path} holds no state dict of tensors ({{'base_model': state}} expected)")
    return strip_module_prefix(obj)


def detect(state: dict[str, torch.Tensor]) -> tuple[type[PointEncoder], str] | None:
    """(family, "pretrain" or "finetune") of an official state, or None."""
    for family in FAMILIES.values():
        module = family_module(family)
        kind = module.official_kind(state) if hasattr(module, "official_kind") else None
        if kind:
            return family, kind
    return None


def read_official(obj, path: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(record, weights, report)`` of a released checkpoint already loaded as ``obj``.

    ``report``: ``{"source": "point-mae pretrain", "left_out": [official keys not in the encoder]}``."""
    state = official_state(obj, path)
    found = detect(state)
    if found is None:
        wanted = "; ".join(DESCRIPTIONS.get(f, f) for f in sorted(FAMILIES, key=len))
        raise NotOfficialError(f"{path} is not a checkpoint this tool reads: not one of its own, not an exported "
                               f"encoder, and not a released {wanted}")
    family, kind = found
    module = family_module(family)
    weights, left_out = module.from_official(state)
    config = module.config_from_official(state, model_section(path))
    return ({"name": family.family, "config": family(config).describe()["config"]}, weights,
            {"source": f"official {family.family} {kind} checkpoint", "left_out": left_out})


def model_section(path: str) -> dict | None:
    """The ``model:`` section of the official config beside ``path`` (``X.pth`` -> ``X.yaml``), if there is one."""
    yaml_path = os.path.splitext(path)[0] + ".yaml"
    if not os.path.exists(yaml_path):
        return None
    with open(yaml_path) as f:
        data = yaml.safe_load(f)
    return data.get("model") if isinstance(data, dict) else None


def write_official(encoder: PointEncoder, out: str, num_classes: int = 40) -> dict:
    """``out`` (.pth): ``{'base_model': encoder state in the official names}``; ``out`` with .yaml: the config's
    ``model:`` section. Returns what was written."""
    module = family_module(type(encoder))
    state = module.to_official({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()})
    tmp = f"{out}.tmp"
    torch.save({"base_model": state}, tmp)
    os.replace(tmp, out)
    yaml_path = os.path.splitext(out)[0] + ".yaml"
    with open(yaml_path, "w") as f:
        yaml.safe_dump({"model": module.official_yaml(encoder.config, num_classes)}, f, sort_keys=False)
    return {"out": out, "yaml": yaml_path, "tensors": len(state), "format": encoder.family}
