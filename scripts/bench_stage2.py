"""Stage-2 step speed with the frozen teacher run every step vs. its features exported into the cache.

    .venv/bin/python scripts/bench_stage2.py caches/demo.zarr runs/demo-s1/last.pt [--steps 20]

Exports the stage-1 model's features into a temporary copy of the cache
(timed), then trains the same number of stage-2 steps both ways, side by side
in one run, and prints samples/s, seconds per step, data wait and the ratio.
With exported features the input is the first N stored points without
augmentation (what was exported); online, the usual random window is augmented.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from train.export_teacher import export_teacher
from train.stages.stage2 import Stage2Config, train_stage2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache")
    ap.add_argument("stage1")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-stage2-")
    try:
        url = f"{tmp}/cache.zarr"
        shutil.copytree(args.cache, url)
        t = time.perf_counter()
        export_teacher(args.stage1, url, progress=False)
        export_s = time.perf_counter() - t
        rows = []
        for source in ("model", "cache"):
            cfg = Stage2Config(cache=url, out=f"{tmp}/{source}", teacher=args.stage1, steps=args.steps,
                               batch_size=args.batch_size, workers=args.workers, teacher_source=source,
                               log_every=args.steps)
            t = time.perf_counter()
            metrics = train_stage2(cfg, progress=False)
            rows.append((source, metrics["samples_per_s"], (time.perf_counter() - t) / args.steps,
                         metrics["data_wait_pct"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.cache}: stage-2, {args.steps} steps of batch {args.batch_size}; export took {export_s:.1f} s")
    print(f"{'teacher features':<22} {'samples/s':>10} {'s/step (wall)':>14} {'data wait':>10} {'vs online':>10}")
    for source, sps, sec, wait in rows:
        label = "online (frozen model)" if source == "model" else "exported (cache)"
        print(f"{label:<22} {sps:>10.1f} {sec:>14.2f} {wait:>9.1f}% {sps / rows[0][1]:>9.2f}x")


if __name__ == "__main__":
    main()
