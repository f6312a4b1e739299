"""The encoder alone: out of any checkpoint of this tool, into a safetensors file, back as a module.

    train export-encoder runs/s1/last.pt --out encoder.safetensors
    from train import load_encoder
    encoder = load_encoder("encoder.safetensors")     # points (B, N, 3) -> tokens (B, G, C), global (B, 2C)

The file holds the encoder's tensors and its config (``PointMAEConfig`` as
JSON in the safetensors metadata); nothing is pickled, so loading it runs no
code from the file.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, safe_open, save_file

from train import checkpoint
from train.models.point_mae import PointMAEConfig, PointMAEEncoder

ENCODER_STAGES = ("stage1", "stage2", "finetune", "segment")  # checkpoints whose model holds a Point-MAE encoder
FORMAT = "teacher-cache/point-mae-encoder"


def encoder_state(path: str) -> tuple[PointMAEConfig, dict[str, torch.Tensor]]:
    """The encoder's config and weights from a checkpoint (stage-1, stage-2, fine-tuned) or an exported file."""
    if path.endswith(".safetensors"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no encoder file at {path}")
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for what is not its format
            raise checkpoint.CheckpointError(f"{path} is not a safetensors file ({type(e).__name__}: {e})") from None
        if meta.get("format") != FORMAT:
            raise checkpoint.CheckpointError(f"{path} is not an encoder exported by `train export-encoder`")
        return PointMAEConfig(**json.loads(meta["config"])), load_file(path)
    state = checkpoint.load(path, stage=ENCODER_STAGES)
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    return PointMAEConfig(**state["model_config"]), weights


def export_encoder(ckpt: str, out: str) -> dict:
    """Write the encoder of ``ckpt`` to ``out`` (safetensors, config in the metadata); returns what was written."""
    config, weights = encoder_state(ckpt)
    tmp = f"{out}.tmp"
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp,
              metadata={"format": FORMAT, "config": json.dumps(config.to_dict()), "source": os.path.abspath(ckpt)})
    os.replace(tmp, out)
    return {"out": out, "tensors": len(weights), "parameters": int(sum(v.numel() for v in weights.values())),
            "config": config.to_dict()}


def load_encoder(path: str, device: str | torch.device = "cpu") -> PointMAEEncoder:
    """A Point-MAE encoder in eval mode: ``tokens, global_feature = encoder(points)``.

    ``path``: an exported ``.safetensors`` file or any checkpoint of this tool with an encoder.
    """
    config, weights = encoder_state(path)
    encoder = PointMAEEncoder(config)
    encoder.load_state_dict(weights)
    return encoder.to(device).eval()
