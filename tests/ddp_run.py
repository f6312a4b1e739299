"""Run one training stage under torchrun and save this rank's trainable parameters (for tests/test_ddp.py).

    torchrun --nproc_per_node=2 tests/ddp_run.py STAGE '{"cache": ..., "out": ..., ...}'

Every rank writes OUT/rank<R>.pt with the parameters it holds after the run,
so a test can check that DDP kept the ranks' weights bit-identical.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from train.loop import run


def main() -> None:
    stage, options = sys.argv[1], json.loads(sys.argv[2])
    resume, stop_at = options.pop("resume", False), options.pop("stop_at", None)
    if stage == "stage1":
        from train.stages.stage1 import Stage1Config as Config, Stage1Task as Task
    elif stage == "stage2":
        from train.stages.stage2 import Stage2Config as Config, Stage2Task as Task
    elif stage == "finetune":
        from train.downstream.finetune import FinetuneConfig as Config, FinetuneTask as Task
    elif stage == "segment":
        from train.downstream.segment import SegmentConfig as Config, SegmentTask as Task
    else:
        from train.stages.fusion import FusionRunConfig as Config, FusionTask as Task
    cfg = Config(**options)
    task = Task(cfg.resolved() if stage in ("finetune", "segment") else cfg)
    run(task.cfg, task, resume=resume, progress=False, stop_at=stop_at)
    module = {"stage2": "module", "finetune": "model", "segment": "model"}.get(stage, "objective")
    module = getattr(task, module)
    params = {n: p.detach().clone() for n, p in module.named_parameters()}
    torch.save(params, os.path.join(options["out"], f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    main()
