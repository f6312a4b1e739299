"""The task registry: every kind of run by its stage name, and what the rest of the tool needs to know of it.

    from train.tasks import TASKS
    spec = TASKS["finetune"]
    Config, Task = spec.config_class(), spec.task_class()
    record = spec.load("evaluation")(ckpt, cache)  # what `train report` shows of a finished run

A checkpoint records its task's ``name`` as ``stage``: reading one, checkpoint errors name the task's command
and the encoder tools accept the tasks whose model holds an ``encoder``; `train report` evaluates and draws a
run with its task's ``evaluation`` and ``columns``; the DDP tests build any task from here, and read its
trained module as ``task.trained``. Entries name their classes
and functions as ``"module:attribute"`` strings, imported when asked for, so reading the registry imports no
model code. A new task is one entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class TaskSpec:
    name: str            # the ``stage`` a checkpoint records
    command: str         # how a user starts it (named in errors)
    config: str          # "module:ConfigClass"
    task: str            # "module:TaskClass"
    evaluation: str      # "module:function": (checkpoint, cache) -> the report's evaluation record
    columns: str         # "module:CONSTANT": the report table's columns
    has_encoder: bool    # the model holds a registered point encoder as ``encoder``
    resolves: bool = False  # the config fills itself from a recipe (``cfg.resolved()``) before the run
    picture: str | None = None  # "module:function": (checkpoint, cache, out dir, dpi) -> one more PNG for the report
    starts_from: str | None = None  # the config option naming the checkpoint a run starts from (cost.json's chain)
    fine_tunes: bool = False  # a downstream run: its cost is fine-tuning, not pre-training (the paper's Table 5)

    def config_class(self) -> type:
        return _load(self.config)

    def task_class(self) -> type:
        return _load(self.task)

    def load(self, target: str) -> Any:
        return _load(getattr(self, target))


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("stage1", "train stage1", "train.stages.stage1:Stage1Config", "train.stages.stage1:Stage1Task",
             "train.report:object_evaluation", "train.report:OBJECT_COLUMNS", True,
             starts_from="init"),
    TaskSpec("stage2", "train stage2", "train.stages.stage2:Stage2Config", "train.stages.stage2:Stage2Task",
             "train.report:object_evaluation", "train.report:OBJECT_COLUMNS", True,
             starts_from="teacher"),
    TaskSpec("mae", "train mae", "train.stages.mae:MaeConfig", "train.stages.mae:MaeTask",
             "train.report:object_evaluation", "train.report:OBJECT_COLUMNS", True, resolves=True,
             starts_from="init"),
    TaskSpec("joint", "train joint", "train.stages.joint:JointConfig", "train.stages.joint:JointTask",
             "train.report:object_evaluation", "train.report:OBJECT_COLUMNS", True, starts_from="init"),
    TaskSpec("finetune", "train finetune", "train.downstream.finetune:FinetuneConfig",
             "train.downstream.finetune:FinetuneTask", "train.report:finetune_evaluation",
             "train.report:FINETUNE_COLUMNS", True, resolves=True, starts_from="init", fine_tunes=True),
    TaskSpec("segment", "train segment", "train.downstream.segment:SegmentConfig",
             "train.downstream.segment:SegmentTask", "train.report:partseg_evaluation",
             "train.report:SEGMENT_COLUMNS", True, resolves=True,
             picture="train.report:parts_picture", starts_from="init", fine_tunes=True),
    TaskSpec("semseg", "train semseg", "train.downstream.semseg:SemsegConfig",
             "train.downstream.semseg:SemsegTask", "train.report:semseg_evaluation",
             "train.report:SEMSEG_COLUMNS", True, resolves=True, starts_from="init", fine_tunes=True),
    TaskSpec("detect", "train detect", "train.downstream.detect:DetectConfig",
             "train.downstream.detect:DetectTask", "train.report:detect_evaluation",
             "train.report:DETECT_COLUMNS", True, resolves=True, picture="train.report:boxes_picture",
             starts_from="init", fine_tunes=True),
    TaskSpec("fusion-pretrain", "train fusion pretrain", "train.stages.fusion:FusionRunConfig",
             "train.stages.fusion:FusionTask", "train.report:no_evaluation", "train.report:SEG_COLUMNS",
             False),
    TaskSpec("fusion-finetune", "train fusion finetune", "train.stages.fusion:FusionRunConfig",
             "train.stages.fusion:FusionTask", "train.report:lidar_seg_evaluation",
             "train.report:SEG_COLUMNS", False, starts_from="init", fine_tunes=True),
)}

ENCODER_TASKS = tuple(name for name, spec in TASKS.items() if spec.has_encoder)


def describe(name: str) -> str:
    """``a `train stage1``` for a task name (any other string quoted as it is)."""
    return f"a `{TASKS[name].command}`" if name in TASKS else repr(name)
