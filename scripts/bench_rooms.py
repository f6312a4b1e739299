"""Rooms at S3DIS scale: build rate, training-block rate, and memory that follows a room, not the area.

    .venv/bin/python scripts/bench_rooms.py [--room-points 1000000] [--rooms 4,12] [--eval-rooms 1,2]

Demo rooms scaled to S3DIS's largest (about a million points each) are built into fresh caches of a few and of
more rooms; each measurement runs in its own process, so its peak RSS is its own. Printed side by side in one run:

- build: points/s and peak RSS of `preprocess rooms demo-rooms` (in-process) for each room count: the same RSS
  for more rooms means the build holds a room (a block of rooms), never the area;
- training blocks: blocks/s of `train semseg`'s stream (2,048 points per block, batch 32) in-process and with 2
  DataLoader workers, and its peak RSS;
- whole-room evaluation (`train eval semseg`'s sliding blocks, 1 vote, 512-point blocks with the tiny encoder):
  points/s and peak RSS for test splits of ``--eval-rooms`` rooms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child_build(url: str, rooms: int, room_points: int, areas: int | None = None) -> dict:
    from preprocess.build_common import RunOptions
    from preprocess.build_rooms import RoomBuildConfig, build_rooms

    t = time.perf_counter()
    build_rooms(url, RoomBuildConfig("demo-rooms", rooms=rooms, room_points=room_points, areas=areas or rooms),
                RunOptions(progress=False, overwrite=True))
    from cache_schema import open_cache

    return {"seconds": time.perf_counter() - t, "points": int(open_cache(url).room_sizes().sum())}


def child_blocks(url: str, workers: int, batches: int) -> dict:
    import torch

    from train.data.rooms import RoomBlockStream, RoomStreamConfig

    stream = RoomBlockStream(url, RoomStreamConfig(split="train", num_points=2048))
    stream.set_position(0, batch_size=32, drop_last=True, num_workers=workers, continuous=True)
    if stream.batches_per_epoch() == 0:
        raise SystemExit(f"{url}: fewer than 32 training blocks per epoch; use more --room-points")
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                         persistent_workers=workers > 0)
    it, seen = iter(loader), 0
    next(it)  # the first batch pays for starting workers and opening the store
    t = time.perf_counter()
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
        seen += 32
    return {"seconds": time.perf_counter() - t, "blocks": seen}


def child_eval(url: str) -> dict:
    from cache_schema import open_cache
    from train.eval.semantic_segmentation import evaluate_rooms
    from train.models import create_encoder
    from train.models.part_segmentation import PartSegmentation

    model = PartSegmentation(create_encoder("point-mae-tiny", num_group=32, group_size=32), 0, 13).eval()
    cache = open_cache(url)
    t = time.perf_counter()
    s = evaluate_rooms(model, cache, "test", 512, votes=1)
    return {"seconds": time.perf_counter() - t, "points": s["num_points"], "rooms": s["rooms"]}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--room-points", type=int, default=1_000_000)
    ap.add_argument("--rooms", default="4,12", help="room counts of the build rows (each its own area; the build "
                                                    "writes blocks of 4 rooms)")
    ap.add_argument("--eval-rooms", default="1,2", help="test rooms of the evaluation rows")
    ap.add_argument("--batches", type=int, default=20, help="training batches timed per row")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        result = {"build": lambda: child_build(rest[0], int(rest[1]), int(rest[2])),
                  "build-areas": lambda: child_build(rest[0], int(rest[1]), int(rest[2]), areas=2),
                  "blocks": lambda: child_blocks(rest[0], int(rest[1]), int(rest[2])),
                  "eval": lambda: child_eval(rest[0])}[kind]()
        rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        result["peak_rss_mib"] = rss / 1024  # the largest process: this one or a DataLoader worker
        print(json.dumps(result))
        return
    root = tempfile.mkdtemp(prefix="bench-rooms-")
    p = args.room_points
    print(f"demo rooms of {p:,} points (S3DIS's largest rooms hold about a million), one process per row\n")
    print(f"{'measurement':<44} {'rate':>22} {'peak RSS':>10}")
    builds = {}
    for n in [int(n) for n in args.rooms.split(",") if n]:
        url = f"{root}/rooms-{n}.zarr"
        r = run_child("build", url, str(n), str(p))
        builds[n] = url
        label = f"build {n} rooms ({r['points']:,} points)"
        print(f"{label:<44} {r['points'] / r['seconds'] / 1e6:>13.2f} Mpoint/s {r['peak_rss_mib']:>6.0f} MiB")
    biggest = builds[max(builds)]
    for workers in (0, 2):
        r = run_child("blocks", biggest, str(workers), str(args.batches))
        label = "training blocks of 2,048 points, " + ("in-process" if workers == 0 else f"{workers} workers")
        print(f"{label:<44} {r['blocks'] / r['seconds']:>14.1f} blocks/s {r['peak_rss_mib']:>6.0f} MiB")
    for n in [int(n) for n in args.eval_rooms.split(",") if n]:
        url = f"{root}/eval-{n}.zarr"
        run_child("build-areas", url, str(2 * n), str(p))  # 2 areas: the second, n rooms, is the test split
        r = run_child("eval", url)
        label = f"whole-room evaluation, {r['rooms']} test rooms"
        print(f"{label:<44} {r['points'] / r['seconds'] / 1e3:>13.1f} kpoint/s {r['peak_rss_mib']:>6.0f} MiB")
    print(f"\n(machine: {os.cpu_count()} cores; caches in {root}, deleted)")
    subprocess.run(["rm", "-rf", root], check=False)


if __name__ == "__main__":
    main()
