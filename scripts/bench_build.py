"""Object cache build speed per stage, for tiny and full-size teachers, with 1 and 2 Dask workers.

    .venv/bin/python scripts/bench_build.py [--tiny-shapes 4] [--base-shapes 1] [--views 12] [--resolution 224]

Builds demo shapes (N per class) into fresh caches and prints seconds per shape
for each stage (summed over workers, so they are core-seconds) and shapes/s,
with ratios against one worker, all measured side by side in this run. The
full-size rows use the real architectures (open_clip ViT-B-16, DINOv2 ViT-B/14)
with random weights: inference costs the same as with the pretrained ones.
One worker gets both cores for torch; two workers get one thread each.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from preprocess.build_objects import STAGES, ObjectBuildConfig, RunOptions, build_objects
from preprocess.render import ViewConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny-shapes", type=int, default=4, help="demo shapes per class with the tiny teachers")
    ap.add_argument("--base-shapes", type=int, default=1, help="demo shapes per class with full-size teachers")
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--points", type=int, default=8192)
    args = ap.parse_args()

    runs = [("tiny", ("clip-tiny", "dinov2-tiny"), args.tiny_shapes),
            ("full-size (random)", ("clip-vit-b16-random", "dinov2-vitb14-random"), args.base_shapes)]
    rows = []
    root = tempfile.mkdtemp(prefix="bench-build-")
    try:
        for label, teachers, per_class in runs:
            cfg = ObjectBuildConfig("demo", num_points=args.points, teachers=teachers, max_per_class=per_class,
                                    views=ViewConfig(num_views=args.views, resolution=args.resolution),
                                    num_captions=5)
            base_rate = None
            for workers, threads in ((1, 2), (2, 1)):
                run = RunOptions(workers=workers, torch_threads=threads, progress=False, overwrite=True,
                                 block_rows=max(1, per_class * 10 // 4))
                t0 = time.perf_counter()
                summary = build_objects(f"{root}/{label[:4]}-{workers}.zarr", cfg, run)
                wall = time.perf_counter() - t0
                rate = summary.rows / wall
                base_rate = base_rate or rate
                per_shape = {s: summary.stage_seconds[s] / summary.rows for s in STAGES}
                rows.append((label, workers, summary.rows, per_shape, rate, rate / base_rate))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"demo shapes, {args.views} views of {args.resolution} px, {args.points} points, 5 template captions; "
          "stage columns: core-seconds per shape")
    head = f"{'teachers':<20} {'workers':>7} {'shapes':>6} " + " ".join(f"{s:>8}" for s in STAGES)
    print(head + f" {'shapes/s':>9} {'vs 1 wkr':>9}")
    for label, workers, n, per_shape, rate, ratio in rows:
        print(f"{label:<20} {workers:>7} {n:>6} " + " ".join(f"{per_shape[s]:>8.3f}" for s in STAGES)
              + f" {rate:>9.2f} {ratio:>9.2f}")


if __name__ == "__main__":
    main()
