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
from train.tasks import TASKS


def main() -> None:
    stage, options = sys.argv[1], json.loads(sys.argv[2])
    resume, stop_at = options.pop("resume", False), options.pop("stop_at", None)
    spec = TASKS[stage]
    cfg = spec.config_class()(**options)
    task = spec.task_class()(cfg.resolved() if spec.resolves else cfg)
    run(task.cfg, task, resume=resume, progress=False, stop_at=stop_at)
    params = {n: p.detach().clone() for n, p in task.trained.named_parameters()}
    torch.save(params, os.path.join(options["out"], f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    main()
