"""Print the demo's LiDAR segmentation table: fine-tuning runs evaluated on the validation split.

    .venv/bin/python scripts/demo_seg_results.py caches/demo-scenes.zarr runs/demo-fusion-1pc-pretrained [...]
"""

from __future__ import annotations

import os
import sys

from train.eval.lidar_segmentation import evaluate_seg


def main(cache: str, run_dirs: list[str]) -> None:
    results = [(d, evaluate_seg(os.path.join(d, "last.pt"), cache)) for d in run_dirs]
    classes = list(results[0][1]["per_class_iou"])
    print(f"{cache}: LiDAR-only segmentation, validation split ({results[0][1]['num_frames']} frames), IoU in %")
    print(f"{'run':<36} {'mIoU':>6} {'acc':>6} " + " ".join(f"{c[:8]:>8}" for c in classes))
    for d, r in results:
        per = " ".join(f"{'-' if v is None else f'{100 * v:.1f}':>8}" for v in r["per_class_iou"].values())
        print(f"{d:<36} {100 * r['miou']:>6.1f} {100 * r['accuracy']:>6.1f} {per}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
