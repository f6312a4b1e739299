"""Fusion pre-training speed: targets read from the cache vs. computed online every step (SLidR/ScaLR-style).

    .venv/bin/python scripts/bench_fusion.py [--frames 6] [--steps 6]

Builds a small demo-scenes cache with the full-size DINOv2 ViT-B/14
(random weights) and its camera images, then runs the same pre-training steps
twice, each in its own process so peak memory is its own: with the pair
features streamed from the cache, and with the projection (pairing) and the
DINOv2 forward on every camera image redone for every frame of every step, as
online pipelines do. Prints frames/s, seconds per step, data wait and peak
resident memory, with ratios, side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def online_targets(batch: dict, cache, teacher, size) -> torch.Tensor:
    """Pairs and DINOv2 features of the batch's frames, recomputed from points, cameras and images."""
    from preprocess.dense_features import sample_at_pixels
    from preprocess.pairs import pair_points

    feats, points, starts = [], [], 0
    for i, row in enumerate(batch["row"].tolist()):
        n = int((batch["batch_index"] == i).sum())
        xyz = batch["points"][starts:starts + n, :3].numpy()
        K, T = cache.array("cameras/K")[row], cache.array("cameras/T_lidar_to_cam")[row]
        sizes = cache.array("cameras/image_size")[row]
        pairs = pair_points(xyz, [(K[c], T[c], tuple(sizes[c])) for c in range(len(K))])
        images = [cache.array("cameras/rgb")[row, c, :sizes[c][1], :sizes[c][0]] for c in range(len(K))]
        grids = teacher.encode_patch_grids(images, size)
        f = np.zeros((len(pairs), grids.shape[1]), np.float32)
        for c in range(len(K)):
            sel = pairs.camera == c
            f[sel] = sample_at_pixels(grids[c], pairs.uv[sel], tuple(sizes[c]))
        feats.append(torch.from_numpy(f))
        points.append(torch.from_numpy(pairs.point.astype(np.int64)) + starts)
        starts += n
    return torch.cat(points), torch.cat(feats)


def run_mode(mode: str, url: str, steps: int) -> dict:
    from torch.utils.data import DataLoader

    from cache_schema import open_cache
    from preprocess.teachers import load_teacher
    from train.data.scenes import SceneStream
    from train.models.fusion import FusionConfig, FusionModel, pretrain_losses

    cache = open_cache(url)
    teacher_name = next(iter(cache.teachers))
    teacher = load_teacher("dinov2-vitb14-random") if mode == "online" else None
    size = tuple(cache.teachers[teacher_name].extra["feature_size"])
    model = FusionModel(FusionConfig(), cache.teachers[teacher_name].dim, len(cache.attrs.label_names))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stream = SceneStream(url)
    stream.set_position(0, 0, 2)
    wait = total = 0.0
    done = 0
    while done < steps:
        batches = iter(DataLoader(stream, batch_size=None))
        while done < steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            if mode == "online":
                batch["pair_point"], batch["pair_features"] = online_targets(batch, cache, teacher, size)
            t1 = time.perf_counter()
            losses = pretrain_losses(model, batch, {"contrastive": 1.0, "regression": 1.0})
            opt.zero_grad()
            losses["total"].backward()
            opt.step()
            if done > 0:  # the first step warms up
                wait += t1 - t0
                total += time.perf_counter() - t0
            done += 1
    return {"frames_per_s": 2 * (steps - 1) / total, "s_per_step": total / (steps - 1),
            "wait_pct": 100 * wait / total, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.cache, args.steps)))
        return
    from preprocess.build_common import RunOptions
    from preprocess.build_scenes import SceneBuildConfig, build_scenes

    tmp = tempfile.mkdtemp(prefix="bench-fusion-")
    try:
        url = f"{tmp}/scenes.zarr"
        build_scenes(url, SceneBuildConfig("demo-scenes", frames=args.frames, teachers=("dinov2-vitb14-random",),
                                           store_images=True), RunOptions(progress=False, block_rows=2))
        rows = {}
        for mode in ("cache", "online"):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--cache", url, "--steps",
                                  str(args.steps)], capture_output=True, text=True, check=True)
            rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"fusion pre-training on demo scenes (3 cameras of 320x192, ~30k points/frame), batch 2 frames, "
          f"{args.steps - 1} timed steps; DINOv2 ViT-B/14 (random weights)")
    print(f"{'targets':<34} {'frames/s':>9} {'s/step':>8} {'data+targets wait':>18} {'peak RSS MiB':>13}")
    for mode, label in (("cache", "from the cache"), ("online", "online: pairing + DINOv2 per step")):
        r = rows[mode]
        print(f"{label:<34} {r['frames_per_s']:>9.2f} {r['s_per_step']:>8.2f} {r['wait_pct']:>17.1f}% "
              f"{r['peak_rss_mib']:>13.0f}")
    print(f"cache / online: {rows['cache']['frames_per_s'] / rows['online']['frames_per_s']:.1f}x frames/s")


if __name__ == "__main__":
    main()
