"""Build the official Point-MAE / Point-M2AE models on a CPU, for side-by-side benchmarks (scripts/bench_encoders.py).

    from reference_ops import build_reference
    model = build_reference("/tmp/ref/Point-MAE", "cfgs/finetune_modelnet.yaml")   # head replaced by Identity
    global_feature = model(points)                                                  # (B, N, 3) -> (B, 768)

The official code imports CUDA-only extensions and a few small packages. :func:`install_stand_ins` puts modules
of our own into ``sys.modules`` under their names before the official code is imported:

    knn_cuda.KNN                                  -> train.ops.knn (Euclidean distance, as knn_cuda returns)
    pointnet2_ops.pointnet2_utils                 -> furthest_point_sample = train.ops.farthest_point_sample,
                                                     gather_operation = torch.gather
    chamfer (behind extensions/chamfer_dist)      -> exact distances (imported at module level, unused here)
    easydict, termcolor, timm.models.layers       -> only where the real package is not installed

So grouping (FPS + kNN) costs the same as in our encoders and a comparison measures the rest of the formulation.
The official code also calls ``.cuda()``; :func:`no_cuda` makes that a no-op while it is active. Nothing of the
official repositories is copied here: they are imported at run time from the directory given.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import sys
import types
import warnings

import torch
import yaml
from torch import nn

from train.ops import farthest_point_sample, knn
from train.ops.geometry import exact_cdist

# top-level names both official repositories use for their own packages
REPO_PACKAGES = ("models", "utils", "extensions", "datasets", "tools", "segmentation")


# ---- stand-ins for the CUDA extensions ----

class KNN(nn.Module):
    """knn_cuda.KNN(k, transpose_mode): ``(ref, query) -> (dist, idx)``, Euclidean distances ascending, no grad.

    transpose_mode=True: ref (B, N, 3), query (B, M, 3) -> (B, M, k); False: (B, 3, N), (B, 3, M) -> (B, k, M)."""

    def __init__(self, k: int, transpose_mode: bool = False) -> None:
        super().__init__()
        self.k, self.transpose_mode = k, transpose_mode

    def forward(self, ref: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if not self.transpose_mode:
                ref, query = ref.transpose(1, 2), query.transpose(1, 2)
            near = knn(query.float(), ref.float(), self.k)                          # (B, M, k)
            dist, idx = near.dists.sqrt(), near.idx
            if not self.transpose_mode:
                dist, idx = dist.transpose(1, 2).contiguous(), idx.transpose(1, 2).contiguous()
        return dist, idx


def furthest_point_sample(xyz: torch.Tensor, npoint: int) -> torch.Tensor:
    """pointnet2_ops: xyz (B, N, 3) -> (B, npoint) int32 indices, from index 0, no grad."""
    with torch.no_grad():
        return farthest_point_sample(xyz.detach().float(), npoint).to(torch.int32)


def gather_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """pointnet2_ops: features (B, C, N), idx (B, npoint) -> (B, C, npoint), differentiable in ``features``."""
    return features.gather(2, idx.long().unsqueeze(1).expand(-1, features.shape[1], -1))


def chamfer_forward(xyz1: torch.Tensor, xyz2: torch.Tensor):
    """The compiled ``chamfer.forward``: squared nearest distances both ways and their int32 indices."""
    with torch.no_grad():
        d = exact_cdist(xyz1.float(), xyz2.float()) ** 2                              # (B, n, m)
        d1, i1 = d.min(dim=2)
        d2, i2 = d.min(dim=1)
    return d1, d2, i1.int(), i2.int()


def chamfer_backward(xyz1, xyz2, idx1, idx2, grad_dist1, grad_dist2):
    """The compiled ``chamfer.backward``: gradients of the squared distances through the chosen neighbours."""
    def one_way(a, b, idx, g):
        idx3 = idx.long().unsqueeze(-1).expand(-1, -1, 3)
        ga = 2 * g.unsqueeze(-1) * (a - b.gather(1, idx3))
        return ga, torch.zeros_like(b).scatter_add_(1, idx3, -ga)
    ga1, gb1 = one_way(xyz1, xyz2, idx1, grad_dist1)
    gb2, ga2 = one_way(xyz2, xyz1, idx2, grad_dist2)
    return ga1 + ga2, gb1 + gb2


# ---- stand-ins for small packages, used only when the real one is missing ----

class EasyDict(dict):
    """easydict.EasyDict: a dict whose keys are also attributes, nested dicts converted."""

    def __init__(self, d=None, **kwargs) -> None:
        super().__init__()
        for k, v in {**(d or {}), **kwargs}.items():
            self[k] = v

    def __setitem__(self, key, value) -> None:
        if isinstance(value, dict) and not isinstance(value, EasyDict):
            value = EasyDict(value)
        elif isinstance(value, (list, tuple)):
            value = type(value)(EasyDict(x) if isinstance(x, dict) else x for x in value)
        super().__setitem__(key, value)

    __setattr__ = __setitem__

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class DropPath(nn.Module):
    """timm's DropPath: drop whole samples' residual branches with probability ``drop_prob`` while training."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask.div_(keep) if self.scale_by_keep else mask)


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def _missing(name: str) -> bool:
    return name not in sys.modules and importlib.util.find_spec(name) is None


def install_stand_ins() -> list[str]:
    """Put the stand-ins into ``sys.modules``; returns the names of the small packages that had to be stood in for."""
    utils = _module("pointnet2_ops.pointnet2_utils", furthest_point_sample=furthest_point_sample,
                    gather_operation=gather_operation)
    sys.modules.update({"knn_cuda": _module("knn_cuda", KNN=KNN),
                        "pointnet2_ops": _module("pointnet2_ops", pointnet2_utils=utils),
                        "pointnet2_ops.pointnet2_utils": utils,
                        "chamfer": _module("chamfer", forward=chamfer_forward, backward=chamfer_backward)})
    stood_in = []
    if _missing("easydict"):
        sys.modules["easydict"] = _module("easydict", EasyDict=EasyDict)
        stood_in.append("easydict")
    if _missing("termcolor"):
        sys.modules["termcolor"] = _module("termcolor", colored=lambda text, *a, **k: str(text),
                                           cprint=lambda text, *a, **k: print(text))
        stood_in.append("termcolor")
    if _missing("timm"):
        layers = _module("timm.models.layers", DropPath=DropPath, trunc_normal_=nn.init.trunc_normal_)
        models = _module("timm.models", layers=layers)
        sys.modules.update({"timm": _module("timm", models=models), "timm.models": models,
                            "timm.models.layers": layers})
        stood_in.append("timm")
    return stood_in


@contextlib.contextmanager
def no_cuda():
    """``Tensor.cuda()`` and ``Module.cuda()`` return their argument unchanged while active."""
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda


@contextlib.contextmanager
def _repo_on_path(root: str):
    """Import from ``root`` with its own ``models`` / ``utils`` / ... packages; afterwards they leave
    ``sys.modules`` again (the classes built keep working), so both repositories fit in one process."""
    def ours(name: str) -> bool:
        return name.split(".")[0] in REPO_PACKAGES

    saved = {n: m for n, m in sys.modules.items() if ours(n)}
    for n in saved:
        del sys.modules[n]
    for pkg in REPO_PACKAGES:  # folders without __init__.py: pin them to this repository
        path = os.path.join(root, pkg)
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, "__init__.py")):
            sys.modules[pkg] = _module(pkg, __path__=[path])
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for n in [n for n in sys.modules if ours(n)]:
            del sys.modules[n]
        sys.modules.update(saved)


def model_section(root: str, cfg_path: str) -> dict:
    """The ``model:`` section of an official config file (``cfg_path`` relative to the repository)."""
    with open(os.path.join(root, cfg_path)) as f:
        return yaml.safe_load(f)["model"]


def build_reference(root: str, cfg_path: str, head: bool = False) -> nn.Module:
    """The official model of ``cfg_path`` (its ``model:`` section through the repository's own
    ``build_model_from_cfg``), randomly initialised the official way, on the CPU. Without ``head`` the
    classification head (``cls_head_finetune``) is an Identity, so ``model(points)`` returns the head's input:
    the global feature."""
    if not os.path.isdir(os.path.join(root, "models")):
        raise FileNotFoundError(f"{root} has no models/ folder: not a clone of the official repository")
    install_stand_ins()
    easydict = importlib.import_module("easydict")
    cfg = easydict.EasyDict(model_section(root, cfg_path))
    log = io.StringIO()  # their loggers print banners; keep them for an error message only
    try:
        with _repo_on_path(root), no_cuda(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore", FutureWarning)  # timm.models.layers is deprecated
            model = importlib.import_module("models").build_model_from_cfg(cfg)
    except Exception as e:
        raise RuntimeError(f"building {cfg.get('NAME')} from {root}/{cfg_path} failed: {e}\n{log.getvalue()}") from e
    if hasattr(model, "_init_weights"):  # Point-MAE initialises so when fine-tuning from scratch
        model.apply(model._init_weights)
    if not head:
        model.cls_head_finetune = nn.Identity()
    return model
