"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists, dicts.

A checkpoint holds the model, loss temperatures, optimiser and scheduler
states, the step and data position, every RNG state, the full run config and
the cache's identity (schema, fingerprint, teacher records).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                      int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _to_lists(random.getstate())}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate(_to_tuples(state["python"]))


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save(path: str, payload: dict) -> None:
    """Write atomically (a killed save never leaves a half checkpoint)."""
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
