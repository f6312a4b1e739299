"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists, dicts.

A checkpoint holds the model, loss temperatures, optimiser and scheduler
states, the step and data position, every RNG state, the full run config and
the cache's identity (schema, fingerprint, teacher records).
"""

from __future__ import annotations

import os
import random
import re

import numpy as np
import torch

from train.tasks import ENCODER_TASKS, describe


def rng_state() -> dict:
    np_state = np.random.get_state()
    cuda = {"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}
    return {"torch": torch.get_rng_state(), **cuda,
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                      int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _to_lists(random.getstate())}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
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


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this tool, or one of the wrong kind."""


_LEGACY_MLP = re.compile(r"(blocks\.\d+\.mlp\.)([02])\.")


def rename_legacy_mlp(tensors: dict) -> dict:
    """Checkpoints before the encoder registry named the transformer MLP ``mlp.0`` / ``mlp.2``; the blocks now
    carry the official ``mlp.fc1`` / ``mlp.fc2``."""
    return {_LEGACY_MLP.sub(lambda m: f"{m.group(1)}fc{1 if m.group(2) == '0' else 2}.", k): v
            for k, v in tensors.items()}


def upgrade(state: dict) -> dict:
    """A checkpoint of an encoder stage written before the registry (no ``encoder`` record), in today's names."""
    if state.get("stage") in ENCODER_TASKS and "encoder" not in state:
        state = {**state, "model": rename_legacy_mlp(state["model"])}
        if "decoders" in state:
            state["decoders"] = rename_legacy_mlp(state["decoders"])
    return state


def encoder_record(state: dict) -> dict:
    """``{"name": family, "config": {...}}`` of the encoder a checkpoint holds. Checkpoints written before the
    encoder registry stored only ``model_config``: they are Point-MAE's."""
    if isinstance(state.get("encoder"), dict) and "name" in state["encoder"]:
        return state["encoder"]
    return {"name": "point-mae", "config": state["model_config"]}


def load(path: str, stage: str | tuple[str, ...] | None = None) -> dict:
    """A checkpoint's contents; ``stage`` (one kind or several) refuses any other kind with a one-line message."""
    return check_stage(read(path), path, stage)


def read(path: str):
    """What a ``torch.save`` file holds, read with ``weights_only=True`` (nothing in it runs); one-line errors."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for what is not a checkpoint
        # torch's own text advises weights_only=False, which would run whatever the file holds: not repeated
        raise CheckpointError(f"{path} is not a readable checkpoint of this tool ({type(e).__name__}: damaged, "
                              "truncated or another kind of file)") from None


def check_stage(state, path: str, stage: str | tuple[str, ...] | None = None) -> dict:
    """``state`` if it is a checkpoint of this tool of kind ``stage``; a one-line error otherwise."""
    if not isinstance(state, dict) or "stage" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this tool (no 'stage' record)")
    wanted = (stage,) if isinstance(stage, str) else stage
    if wanted and state["stage"] not in wanted:
        raise CheckpointError(f"{path} is {describe(state['stage'])} checkpoint; "
                              f"this needs {' or '.join(describe(w) for w in wanted)} one")
    return upgrade(state)
