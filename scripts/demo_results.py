"""Print the demo's evaluation table: every run's checkpoint (best.pt, or last.pt) next to random init.

    .venv/bin/python scripts/demo_results.py runs/demo-s1 [runs/demo-s2 ...]

The numbers are the ones `train report` draws (each run's eval.json, computed
on the run's own cache the first time).
"""

from __future__ import annotations

import json
import os
import sys

from train.report import evaluation


def main(run_dirs: list[str]) -> None:
    rows = []
    for run_dir in run_dirs:
        with open(os.path.join(run_dir, "config.json")) as f:
            cache = json.load(f)["config"]["cache"]
        result = evaluation(run_dir, cache)
        if not rows:
            rows.append(("random", result["random init"]))
        rows.append((os.path.join(run_dir, result["checkpoint"]), result["this run"]))
    few = result["setting"].split("few-shot ")[-1]
    print(f"{'encoder':<32} {'zero-shot top1':>15} {'top5':>7} {'linear':>8} {few:>16}")
    for name, r in rows:
        print(f"{name:<32} {r['zeroshot']:>15.1%} {r['zeroshot_top5']:>7.1%} {r['linear']:>8.1%} "
              f"{r['fewshot']:>9.1%} ± {r['fewshot_std']:.1%}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
