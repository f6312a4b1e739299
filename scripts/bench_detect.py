"""Detection at ScanNet scale on this CPU: training steps/s, evaluation rooms/s, and the share of a step spent in
Hungarian matching (it must stay below 10%).

    .venv/bin/python scripts/bench_detect.py [--points 40000] [--batch 2] [--steps 3] [--models point-mae-tiny,point-mae]

Demo rooms of ``--points`` points each (ScanNet rooms hold 50k-500k; 3DETR samples 40,000) go into a fresh cache.
For each encoder, with its ``detect`` recipe (Point-MAE: 2,048 patches of 64 points) and 3DETR's decoder (256
queries, 8 layers of width 256), one process measures side by side:

- a training step of `train detect` (forward, the set loss over the 8 decoder layers, backward, AdamW), timed over
  ``--steps`` steps after one warm-up step;
- the matching inside it: the criterion's Hungarian matcher on the same outputs (every layer, as the loss runs it);
- evaluation: rooms/s of `train eval detect`'s forward pass and 3DETR's NMS and per-class proposals.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cache_schema import open_cache  # noqa: E402
from train.data.detection import SceneStream, SceneStreamConfig  # noqa: E402
from train.downstream.detect import MATCHER, scene_targets  # noqa: E402
from train.eval.detection_metrics import parse_predictions  # noqa: E402
from train.models.detector import Detector, predicted_boxes  # noqa: E402
from train.models.encoders import create_encoder  # noqa: E402
from train.models.set_criterion import HungarianMatcher, SetCriterion  # noqa: E402


def build_cache(url: str, points: int, rooms: int) -> None:
    from preprocess.build_common import RunOptions
    from preprocess.build_rooms import RoomBuildConfig, build_rooms

    build_rooms(url, RoomBuildConfig("demo-rooms", rooms=rooms, room_points=points, areas=2),
                RunOptions(progress=False, overwrite=True))


def one_model(url: str, name: str, points: int, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    classes = open_cache(url).box_classes
    model = Detector(create_encoder(name, "detect"), len(classes))
    criterion = SetCriterion(len(classes), HungarianMatcher(**MATCHER))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    stream = SceneStream(url, SceneStreamConfig(num_points=points, prefetch_bytes=0))
    stream.set_position(0, batch_size=batch, drop_last=False)
    read = iter(stream)
    batches = [next(read) for _ in range(steps + 1)]
    step_times, match_times = [], []
    for i, b in enumerate(batches):
        t = time.perf_counter()
        outputs = model(b["points"])
        targets = scene_targets(b, b["points"], torch.device("cpu"))
        loss, _ = criterion(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        elapsed = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            for layer in [outputs["outputs"], *outputs["aux_outputs"]]:
                criterion.matcher(layer, targets)
        matched = time.perf_counter() - t
        if i:  # the first step warms up allocators and threads
            step_times.append(elapsed)
            match_times.append(matched)
    model.eval()
    eval_stream = SceneStream(url, SceneStreamConfig(split="test", num_points=points, augment=False,
                                                     prefetch_bytes=0))
    eval_stream.set_position(0, batch_size=batch, drop_last=False)
    t, rooms = time.perf_counter(), 0
    with torch.inference_mode():
        for b in eval_stream:
            last = model(b["points"])["outputs"]
            boxes = predicted_boxes(last).numpy()
            for i in range(len(boxes)):
                parse_predictions(boxes[i], last["sem_cls_prob"][i].numpy(), last["objectness_prob"][i].numpy())
            rooms += len(boxes)
    eval_rate = rooms / (time.perf_counter() - t)
    step = float(np.mean(step_times))
    return {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "step_s": step,
            "steps_per_s": 1 / step, "match_ms": 1000 * float(np.mean(match_times)),
            "match_share": float(np.mean(match_times)) / step, "eval_rooms_per_s": eval_rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--models", default="point-mae-tiny,point-mae")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        url = os.path.join(tmp, "rooms.zarr")
        build_cache(url, args.points, rooms=2 * args.batch * (args.steps + 1))
        rows = [one_model(url, m, args.points, args.batch, args.steps) for m in args.models.split(",")]
    print(f"detection at {args.points} points per room, batch {args.batch}, {torch.get_num_threads()} CPU threads, "
          f"{args.steps} timed steps")
    print(f"{'encoder':<16} {'params (M)':>10} {'step (s)':>9} {'steps/s':>8} {'matching (ms)':>14} "
          f"{'matching share':>15} {'eval rooms/s':>13}")
    for r in rows:
        print(f"{r['model']:<16} {r['params_m']:>10.1f} {r['step_s']:>9.2f} {r['steps_per_s']:>8.3f} "
              f"{r['match_ms']:>14.1f} {100 * r['match_share']:>14.1f}% {r['eval_rooms_per_s']:>13.2f}")


if __name__ == "__main__":
    main()
