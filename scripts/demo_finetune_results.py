"""Print the demo's downstream table: each `train finetune` or `train segment` run, its best test epoch and its
last, and for classification the linear-SVM probe of its initial encoder on the same cache.

    .venv/bin/python scripts/demo_finetune_results.py runs/demo-scan-ft-s1 runs/demo-scan-ft-random
    .venv/bin/python scripts/demo_finetune_results.py runs/demo-seg-s1 runs/demo-seg-random
"""

from __future__ import annotations

import csv
import json
import os
import sys

from cache_schema import open_cache
from train.eval import frozen

COLUMNS = {"finetune": (("overall_accuracy", "OA"), ("mean_class_accuracy", "mAcc")),
           "segment": (("instance_miou", "Inst.mIoU"), ("class_miou", "Cls.mIoU"))}


def main(run_dirs: list[str]) -> None:
    stage = None
    for run_dir in run_dirs:
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        cfg = config["config"]
        if config["stage"] != stage:
            stage = config["stage"]
            (a, a_name), (b, b_name) = COLUMNS[stage]
            probe_head = "SVM probe" if stage == "finetune" else ""
            print(f"{'run':<28} {'init':<20} {a_name + ' best':>14} {b_name + ' best':>14} {a_name + ' last':>14} "
                  f"{b_name + ' last':>14} {probe_head:>10}")
        with open(os.path.join(run_dir, "validation.csv")) as f:
            rows = list(csv.DictReader(f))
        best, last = max(rows, key=lambda r: float(r["score"])), rows[-1]  # the first best, as best.pt keeps
        init = cfg["init"]
        probe = ""
        if stage == "finetune":
            cache = open_cache(cfg["cache"])
            acc = frozen.linear_probe(frozen.load_student(init, cache, cfg["model"]), cache,
                                        cfg["num_points"])["accuracy"]
            probe = f"{acc:.1%}"
        shown = init if init == "random" else os.path.relpath(init)
        print(f"{run_dir:<28} {shown:<20} {float(best[a]):>14.1%} {float(best[b]):>14.1%} {float(last[a]):>14.1%} "
              f"{float(last[b]):>14.1%} {probe:>10}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
