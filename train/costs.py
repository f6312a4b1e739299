"""What a run cost (the paper's Table 5): device-seconds and parameter counts in ``RUN_DIR/cost.json``, and the
chain of runs a run started from.

The loop keeps a :class:`CostClock` per run. ``cost.json`` holds the task (``stage``), the device kind and world
size, the seconds of training and of validation, device-seconds (seconds x processes, one device each), the
steps done, the parameter counts of the trained module and of its encoder, and the checkpoint the run started
from (``--teacher`` of stage-2, ``--init`` of the downstream tasks and fusion fine-tuning: the option is the
task's ``starts_from`` in :data:`train.tasks.TASKS`). A resumed run adds to the seconds its checkpoint recorded;
each stretch of a run is one ``segments`` entry. :func:`cost_chain` follows the starting checkpoints back to the
first run, e.g. fine-tune -> stage-2 -> stage-1.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

from train.tasks import TASKS

if TYPE_CHECKING:  # reading costs (``train report --costs``) imports no torch
    import torch
    from torch import nn

COST_FILE = "cost.json"
NOT_A_CHECKPOINT = ("random", "none", "")  # values of a starts_from option that name no file


def device_kind(device: torch.device) -> str:
    """``cpu`` or ``cuda:<GPU name>`` (e.g. ``cuda:NVIDIA A100-SXM4-80GB``): what a device-hour was spent on."""
    if device.type == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def parameter_counts(module: nn.Module) -> dict[str, int | None]:
    """Parameters of the trained module: ``total``, ``trainable`` (what the optimiser updates) and ``encoder``
    (the point encoder inside it, frozen or not; None when the module has none). Shared tensors count once."""
    from train.models.encoders import PointEncoder

    def count(m: nn.Module, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable_only)

    encoder = next((m for m in module.modules() if isinstance(m, PointEncoder)), None)
    return {"total": count(module), "trainable": count(module, True),
            "encoder": None if encoder is None else count(encoder)}


def started_from(stage: str, settings: dict) -> dict | None:
    """``{"option", "checkpoint", "path"}`` of the checkpoint a run of ``stage`` with ``settings`` (its config)
    started from, ``path`` made absolute; None when it started from random weights or its task has no source."""
    spec = TASKS.get(stage)
    option = spec.starts_from if spec else None
    value = settings.get(option) if option else None
    if not isinstance(value, str) or value.lower() in NOT_A_CHECKPOINT:
        return None
    return {"option": f"--{option.replace('_', '-')}", "checkpoint": value, "path": os.path.abspath(value)}


def write_json(path: str, record: dict) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)


class CostClock:
    """The cost of one run: the seconds of this process's stretch added to what earlier stretches recorded.

    Training seconds run from :meth:`start` (just before the first step) and include data wait and checkpoint
    saves; validation is timed on its own (:meth:`validation`). Model building and cache opening before the first
    step are not counted. ``previous``: the record of the checkpoint a resumed run continues from.
    """

    def __init__(self, stage: str, device: torch.device, world: int, params: dict, source: dict | None,
                 previous: dict | None, step: int) -> None:
        self.base = previous or {}
        self.head = {"stage": stage, "device": device_kind(device), "world_size": world, "parameters": params,
                     "started_from": source}
        self.first_step, self.started, self.validating = step, None, 0.0
        self.begun = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def start(self) -> None:
        self.started = time.perf_counter()

    def validation(self, seconds: float) -> None:
        self.validating += seconds

    def record(self, step: int) -> dict:
        """The whole run's cost up to ``step``: earlier segments and this one."""
        wall = 0.0 if self.started is None else time.perf_counter() - self.started
        segment = {"device": self.head["device"], "world_size": self.head["world_size"], "began": self.begun,
                   "first_step": self.first_step, "last_step": step,
                   "train_seconds": max(wall - self.validating, 0.0), "validation_seconds": self.validating}
        segments = list(self.base.get("segments", []))
        if step > self.first_step or self.validating:  # a finished run resumed adds no empty segment
            segments.append(segment)
        train = sum(s["train_seconds"] for s in segments)
        val = sum(s["validation_seconds"] for s in segments)
        device_seconds = sum((s["train_seconds"] + s["validation_seconds"]) * s["world_size"] for s in segments)
        return {"schema": "run-cost", "version": 1, **self.head, "steps": step, "train_seconds": train,
                "validation_seconds": val, "device_seconds": device_seconds, "device_hours": device_seconds / 3600,
                "segments": segments}

    def write(self, run_dir: str, step: int) -> dict:
        record = self.record(step)
        write_json(os.path.join(run_dir, COST_FILE), record)
        return record


def previous_cost(run_dir: str, state: dict) -> dict | None:
    """What a resumed run has spent: ``cost.json`` when it belongs to the checkpoint's step (it may hold the
    validation that followed the save), else the record inside the checkpoint (older checkpoints: none)."""
    path = os.path.join(run_dir, COST_FILE)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("steps") == state["step"]:
            return saved
    return state.get("cost")


def read_cost(run_dir: str) -> dict:
    """A run's ``cost.json``; for a run written before costs were recorded, its stage and starting checkpoint
    from ``config.json`` with ``device_seconds`` None (unknown)."""
    path = os.path.join(run_dir, COST_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir} has no {COST_FILE} nor config.json: is it a run directory of `train`?")
    with open(config_path) as f:
        config = json.load(f)
    stage = config.get("stage", "?")
    return {"stage": stage, "device": None, "world_size": config.get("world_size"), "device_seconds": None,
            "device_hours": None, "steps": None, "parameters": {},
            "started_from": started_from(stage, config.get("config", {}))}


def cost_chain(run_dir: str) -> list[dict]:
    """The runs behind ``run_dir``, first run first, each its cost record with ``run_dir``: the run, the run its
    starting checkpoint came from, and so on. A checkpoint outside any run folder (a released Point-MAE file, an
    exported encoder) ends the chain as a record with stage ``external`` and unknown cost."""
    chain, seen = [], set()
    while run_dir is not None:
        real = os.path.realpath(run_dir)
        if real in seen:
            raise ValueError(f"{run_dir}: the runs' starting checkpoints form a loop")
        seen.add(real)
        record = {**read_cost(run_dir), "run_dir": run_dir}
        chain.append(record)
        source, run_dir = record.get("started_from"), None
        if source:
            path = source["path"] if os.path.exists(source["path"]) else source["checkpoint"]
            folder = os.path.dirname(path) or "."
            if any(os.path.exists(os.path.join(folder, n)) for n in (COST_FILE, "config.json")):
                run_dir = folder
            else:
                chain.append({"stage": "external", "run_dir": path, "device": None, "device_seconds": None,
                              "device_hours": None, "parameters": {}, "started_from": None})
    return chain[::-1]
