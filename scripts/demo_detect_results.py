"""Print the demo's 3D detection table: `train detect` runs scored on the held-out rooms.

    .venv/bin/python scripts/demo_detect_results.py caches/demo-rooms.zarr runs/demo-detect-s2 runs/demo-detect-random

Each run's best.pt (else last.pt) is scored as `train eval detect` scores it: 3DETR's NMS and per-class
proposals, then AP per class and mAP at IoU 0.25 and 0.5 over the test rooms.
"""

from __future__ import annotations

import sys

from train.eval.detection import evaluate_detection, load_detector
from train.report import run_checkpoint


def main(cache_url: str, run_dirs: list[str]) -> None:
    results = []
    for d in run_dirs:
        model, state = load_detector(run_checkpoint(d))
        results.append((d, evaluate_detection(model, cache_url, "test", state["num_points"])))
    first = results[0][1]
    print(f"{cache_url}: 3D detection on {first['rooms']} test rooms ({first['num_gt']} boxes), AP in %")
    names = list(first["per_class"])
    print(f"{'run':<28} {'mAP25':>6} {'mAP50':>6} " + " ".join(f"{n[:8]:>8}" for n in names) + "   (AP25 per class)")
    for d, r in results:
        ap25 = [v["ap25"] for v in r["per_class"].values()]
        per = " ".join(f"{'-' if a is None else f'{100 * a:.1f}':>8}" for a in ap25)
        print(f"{d:<28} {100 * r['map25']:>6.1f} {100 * r['map50']:>6.1f} {per}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
