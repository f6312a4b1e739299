"""Print the demo's indoor semantic segmentation table: `train semseg` runs scored on whole test rooms.

    .venv/bin/python scripts/demo_semseg_results.py caches/demo-rooms.zarr runs/demo-semseg-s2 runs/demo-semseg-random

Each run's best.pt (else last.pt) is scored as `train eval semseg` scores it: every point of every test room,
sliding 1 m blocks at stride 0.5, 3 votes.
"""

from __future__ import annotations

import sys

from cache_schema import open_cache
from train.eval.semantic_segmentation import evaluate_rooms, load_semseg
from train.report import run_checkpoint


def main(cache_url: str, run_dirs: list[str]) -> None:
    cache = open_cache(cache_url)
    results = []
    for d in run_dirs:
        model, state = load_semseg(run_checkpoint(d))
        results.append((d, evaluate_rooms(model, cache, "test", state["num_points"], block_size=state["block_size"])))
    first = results[0][1]
    print(f"{cache_url}: semantic segmentation of {first['rooms']} whole test rooms ({first['num_points']} points, "
          f"3 votes), in %")
    names = list(first["per_class"])
    print(f"{'run':<28} {'mIoU':>6} {'mAcc':>6} {'OA':>6} " + " ".join(f"{n[:8]:>8}" for n in names))
    for d, r in results:
        per = " ".join(f"{'-' if v is None else f'{100 * v:.1f}':>8}" for v in r["per_class"].values())
        print(f"{d:<28} {100 * r['miou']:>6.1f} {100 * r['macc']:>6.1f} {100 * r['oa']:>6.1f} {per}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
