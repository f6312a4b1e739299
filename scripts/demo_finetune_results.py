"""Print the demo's fine-tuning table: each `train finetune` run (best test epoch and last), and the linear-SVM
probe of its initial encoder on the same cache.

    .venv/bin/python scripts/demo_finetune_results.py runs/demo-scan-ft-s1 runs/demo-scan-ft-random
"""

from __future__ import annotations

import csv
import json
import os
import sys

from cache_schema import open_cache
from train import evaluate


def main(run_dirs: list[str]) -> None:
    print(f"{'run':<30} {'init':<22} {'protocol':>8} {'OA best':>8} {'mAcc best':>10} {'OA last':>8} "
          f"{'mAcc last':>10} {'SVM probe':>10}")
    for run_dir in run_dirs:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        cfg = config["config"]
        with open(os.path.join(run_dir, "validation.csv")) as f:
            rows = list(csv.DictReader(f))
        best = max(rows, key=lambda r: float(r["overall_accuracy"]))  # the first best, as best.pt keeps
        last = rows[-1]
        cache = open_cache(cfg["cache"])
        init = cfg["init"]
        probe = evaluate.linear_probe(evaluate.load_student(init, cache, cfg["model"]), cache, cfg["num_points"])
        shown = init if init == "random" else os.path.relpath(init)
        print(f"{run_dir:<30} {shown:<22} {cfg['protocol']:>8} {float(best['overall_accuracy']):>8.1%} "
              f"{float(best['mean_class_accuracy']):>10.1%} {float(last['overall_accuracy']):>8.1%} "
              f"{float(last['mean_class_accuracy']):>10.1%} {probe['accuracy']:>10.1%}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
