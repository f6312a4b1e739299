"""Scene cache build speed per stage and bytes per frame, demo scenes, tiny and full-size DINOv2, +/- PCA.

    .venv/bin/python scripts/bench_scenes.py [--tiny-frames 8] [--base-frames 4] [--pca-dim 64]

Builds demo-scene frames into fresh caches (one process, both cores for torch)
and prints, side by side in one run: frames/s of each stage (load = generate
the street, ray-cast the LiDAR and render 3 cameras; pair; features = DINOv2
on every camera image + bilinear sampling at the pairs + PCA; write) and of the
whole build, and bytes per frame on disk: the whole cache and the pair features
alone. The last column compares with what ScaLR-style training computes
online per step: a full-resolution feature map per camera (H x W x D, here
counted at float16, uncompressed). The full-size rows use the DINOv2 ViT-B/14
architecture with random weights: inference costs what it costs pretrained.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from cache_schema import open_cache
from preprocess.build_common import RunOptions
from preprocess.build_scenes import STAGES, SceneBuildConfig, build_scenes
from preprocess.scene_sources.demo_scenes import CAMERAS, DemoSceneConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny-frames", type=int, default=8)
    ap.add_argument("--base-frames", type=int, default=4)
    ap.add_argument("--pca-dim", type=int, default=64)
    args = ap.parse_args()
    runs = [("dinov2-tiny", None, args.tiny_frames), ("dinov2-tiny", min(args.pca_dim, 32), args.tiny_frames),
            ("dinov2-vitb14-random", None, args.base_frames), ("dinov2-vitb14-random", args.pca_dim, args.base_frames)]
    w, h = DemoSceneConfig().image_size
    rows = []
    root = tempfile.mkdtemp(prefix="bench-scenes-")
    try:
        for teacher, pca, frames in runs:
            cfg = SceneBuildConfig("demo-scenes", frames=frames, teachers=(teacher,), pca_dim=pca,
                                   pca_fit_frames=min(4, frames))
            url = f"{root}/{teacher}-{pca}.zarr"
            t0 = time.perf_counter()
            summary = build_scenes(url, cfg, RunOptions(progress=False, overwrite=True, block_rows=4))
            wall = time.perf_counter() - t0
            cache = open_cache(url)
            feat = cache.array(f"teachers/{teacher}/pair_features")
            feat_bytes = cache.loc.fs.du(cache.loc.path(f"teachers/{teacher}/pair_features"))
            dim_in = cache.teachers[teacher].extra.get("pca_input_dim") or cache.teachers[teacher].dim
            dense = len(CAMERAS) * h * w * dim_in * 2
            per_stage = {s: frames / summary.stage_seconds[s] if summary.stage_seconds[s] else float("inf")
                         for s in STAGES}
            rows.append((teacher, pca or "-", frames, per_stage, frames / wall, summary.stored_bytes / frames,
                         feat_bytes / frames, feat.shape[0] / frames, dense))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"demo scenes: {len(CAMERAS)} cameras of {w}x{h}, 32-beam LiDAR; stage columns: frames/s of that stage")
    head = (f"{'teacher':<21} {'pca':>4} {'frames':>6} " + " ".join(f"{s:>9}" for s in STAGES)
            + f" {'build f/s':>9} {'MiB/frame':>9} {'feat MiB/f':>10} {'pairs/f':>8} {'dense MiB/f':>11}"
            + f" {'dense/feat':>10}")
    print(head)
    for teacher, pca, n, per_stage, rate, total, feat, pairs, dense in rows:
        print(f"{teacher:<21} {pca!s:>4} {n:>6} " + " ".join(f"{per_stage[s]:>9.2f}" for s in STAGES)
              + f" {rate:>9.2f} {total / 2**20:>9.2f} {feat / 2**20:>10.2f} {pairs:>8.0f} {dense / 2**20:>11.1f}"
              + f" {dense / feat:>9.0f}x")


if __name__ == "__main__":
    main()
