"""``--precision fp32|bf16|fp16|auto``: autocast and loss scaling for every train command.

    auto  bf16 on a CUDA GPU that has it, fp16 (with a GradScaler) on older GPUs, fp32 on a CPU
    bf16  autocast to bfloat16 (on a CPU too: slower than fp32 there, but it checks the numerics)
    fp16  autocast to float16 with dynamic loss scaling

Autocast keeps reductions, softmax and losses in fp32; code whose sums must be
exact (counts, scatter accumulations) casts to fp32 itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    name: str              # fp32, bf16 or fp16: what ``auto`` resolved to
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that scales only for fp16 (a no-op pass-through otherwise)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def resolve_precision(name: str, device: torch.device) -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"--precision is one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    return Precision(name, device.type)
