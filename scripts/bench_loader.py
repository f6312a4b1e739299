"""Streaming reader vs. one file per shape (OpenShape style), same content, side by side; 0 vs 2 workers.

    .venv/bin/python scripts/bench_loader.py caches/demo.zarr [--epochs 2] [--drop-caches]
    .venv/bin/python scripts/bench_loader.py --synthetic 4096   # a ShapeNet-sized shard, 256-row blocks
    .venv/bin/python scripts/bench_loader.py caches/demo.zarr --scenes caches/demo-scenes.zarr   # + LiDAR, FPS

The baseline writes every shape of the train split as one pickled dict in a
``.npy`` (points and float32 teacher features, what OpenShape ships) and reads
it with a map-style Dataset doing the same per-sample work (subsample, augment,
pick a view and a caption). Both are read through DataLoaders with the same
batch size and workers (the stream assembles whole batches in its workers, as
the trainer reads it); samples/s and bytes on disk are printed with ratios.
``--scenes`` adds the LiDAR frame stream in-process vs 2 workers, and FPS on a
CPU (the PyTorch loop vs fpsample) for one 8,192-point cloud.

A last table feeds a training step that leaves the CPU free (``--step-ms`` of
sleep, as a GPU step would) and reports how much of the time is spent waiting
for data, with the stream's read-ahead thread off and on (prefetch.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from bench_common import drop_caches
from torch.utils.data import DataLoader, Dataset

from cache_schema import open_cache
from train.data.augment import augment
from train.data.objects import ObjectStream, StreamConfig, contrastive_terms
from train.data.transport import keep_packed


class PerShapeFiles(Dataset):
    """One pickled dict per shape, from a local folder or any fsspec URL."""

    def __init__(self, folder: str, rows: list[int], terms: dict, num_points: int = 1024) -> None:
        self.folder, self.rows, self.terms, self.num_points = folder, rows, terms, num_points

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        import io

        import fsspec

        row = self.rows[i]
        with fsspec.open(f"{self.folder}/{row:06d}.npy", "rb") as f:
            d = np.load(io.BytesIO(f.read()), allow_pickle=True).item()
        rng = np.random.default_rng(row)
        pts = augment(d["points"][rng.choice(len(d["points"]), self.num_points, replace=False)], rng)
        sample = {"points": torch.from_numpy(pts)}
        view = None
        for term in self.terms:
            values = d[term]
            if term.endswith("/text"):
                sample[term] = torch.from_numpy(values[rng.integers(len(values))])
            else:
                view = rng.integers(len(values)) if view is None else view
                sample[term] = torch.from_numpy(values[view])
        return sample


def write_per_shape(cache, rows: np.ndarray, folder: str, terms: dict) -> int:
    points = cache.array("points")
    for r in rows:
        d = {"points": points[int(r)].astype(np.float32)}
        for term, (name, role) in terms.items():
            d[term] = cache.array(f"teachers/{name}/{role}")[int(r)].astype(np.float32)
        np.save(os.path.join(folder, f"{int(r):06d}.npy"), d, allow_pickle=True)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def rate(loader, epochs: int, cold: bool) -> float:
    n, seconds = 0, 0.0
    for batch in loader:  # warm-up epoch: starts workers, opens files
        pass
    for _ in range(epochs):
        if cold:
            drop_caches()
        t = time.perf_counter()
        for batch in loader:
            n += len(batch["points"])
        seconds += time.perf_counter() - t
    return n / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", nargs="?", help="an objects cache (or use --synthetic)")
    ap.add_argument("--synthetic", type=int, metavar="ROWS",
                    help="instead, write a random objects cache of ROWS shapes with full-size content "
                         "(8192 points, 12 views, 5 captions, 512-d teachers) and the default chunk plan")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before every epoch (root)")
    ap.add_argument("--scenes", help="also a scenes cache: its frame stream with 0 vs 2 workers, and FPS speed")
    ap.add_argument("--step-ms", type=float, default=3.0,
                    help="the simulated GPU step of the last table (sleep, the CPU stays free)")
    ap.add_argument("--s3", action="store_true",
                    help="serve both copies from an S3-compatible server on loopback (moto) and read through s3://")
    args = ap.parse_args()
    if args.synthetic:
        args.cache = write_synthetic(args.synthetic)
    elif not args.cache:
        ap.error("give a cache or --synthetic ROWS")
    try:
        main_s3(args) if args.s3 else main_local(args)
    finally:
        if args.synthetic:
            shutil.rmtree(args.cache, ignore_errors=True)


def write_synthetic(rows: int) -> str:
    """A random objects cache of ``rows`` shapes at full size, written with the default chunk plan."""
    from cache_schema.example import example_objects, finish, write_blocks
    from cache_schema.writer import CacheWriter

    url = os.path.join(tempfile.mkdtemp(prefix="bench-loader-cache-"), "synthetic.zarr")
    attrs, layout, data = example_objects(num_rows=rows, num_points=8192, num_views=12, num_captions=5, dim=512,
                                          failed_rows=())
    with CacheWriter.create(url, attrs, layout) as w:
        write_blocks(w, data)
        finish(w, data)
    return url


def main_local(args) -> None:

    cache = open_cache(args.cache)
    terms = contrastive_terms(cache)
    rows = cache.done_rows("train")
    folder = tempfile.mkdtemp(prefix="bench-loader-")
    try:
        baseline_bytes = write_per_shape(cache, rows, folder, terms)
        cache_bytes = sum(cache.loc.fs.du(cache.loc.path(p)) for p in
                          ["points", *{f"teachers/{n}/{r}" for n, r in terms.values()}])
        results = []
        for workers in (0, 2):
            stream = ObjectStream(args.cache, StreamConfig())
            stream.set_position(0, 0, args.batch_size, num_workers=workers)
            keep = {"persistent_workers": workers > 0}  # worker start-up is not what is measured
            s = rate(DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=keep_packed, **keep),
                     args.epochs, args.drop_caches)
            b = rate(DataLoader(PerShapeFiles(folder, rows.tolist(), terms), batch_size=args.batch_size,
                                num_workers=workers, shuffle=True, drop_last=True, **keep), args.epochs,
                     args.drop_caches)
            results.append((workers, s, b))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.cache}: {len(rows)} train shapes, {args.epochs} epochs, batch {args.batch_size}, "
          f"{'cold' if args.drop_caches else 'warm'} page cache")
    cache_kib, baseline_kib = cache_bytes / cache.num_rows / 1024, baseline_bytes / len(rows) / 1024
    print(f"bytes on disk per shape (points + teacher arrays): cache {cache_kib:.1f} KiB, "
          f"per-shape .npy {baseline_kib:.1f} KiB ({baseline_kib / cache_kib:.2f}x)")
    print(f"{'workers':>7} {'stream samples/s':>17} {'per-shape samples/s':>20} {'ratio':>6} "
          f"{'stream vs 0 workers':>20}")
    for workers, s, b in results:
        print(f"{workers:>7} {s:>17.0f} {b:>20.0f} {s / b:>6.2f} {s / results[0][1]:>19.2f}x")
    with_a_step(args)
    if args.scenes:
        scenes_and_fps(args)


def with_a_step(args) -> None:
    """Samples/s and data wait while a step of ``--step-ms`` (sleep: a GPU step leaves the CPU free) consumes
    every batch, over epochs after the first, with the read-ahead thread off and on."""
    step = args.step_ms / 1000
    rows = []
    for workers in (0, 2):
        for prefetch in (0, StreamConfig().prefetch_bytes):
            stream = ObjectStream(args.cache, StreamConfig(prefetch_bytes=prefetch))
            stream.set_position(0, 0, args.batch_size, num_workers=workers, continuous=True)
            loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=keep_packed,
                                persistent_workers=workers > 0)
            for _ in loader:  # warm-up epoch
                time.sleep(step)
            n, wait, t = 0, 0.0, time.perf_counter()
            for _ in range(args.epochs):
                batches = iter(loader)
                while True:
                    t0 = time.perf_counter()
                    batch = next(batches, None)
                    wait += time.perf_counter() - t0
                    if batch is None:
                        break
                    n += len(batch["points"])
                    time.sleep(step)
            seconds = time.perf_counter() - t
            stream.close()
            rows.append((workers, "on" if prefetch else "off", n / seconds, 100 * wait / seconds))
    print(f"\nwith a {args.step_ms:g} ms step per batch of {args.batch_size} (sleep: the CPU stays free, as on a GPU)")
    print(f"{'workers':>7} {'read-ahead':>10} {'samples/s':>10} {'data wait':>10} {'vs 0 workers, off':>18}")
    for workers, prefetch, rate_, wait in rows:
        print(f"{workers:>7} {prefetch:>10} {rate_:>10.0f} {wait:>9.1f}% {rate_ / rows[0][2]:>17.2f}x")


def scenes_and_fps(args) -> None:
    """LiDAR frames/s in-process vs 2 DataLoader workers, and per-cloud FPS: PyTorch loop vs fpsample."""
    from train.data.scenes import SceneStream, SceneStreamConfig
    from train.ops import farthest_point_sample

    rates = []
    for workers in (0, 2):
        stream = SceneStream(args.scenes, SceneStreamConfig(max_points=16384))
        stream.set_position(0, 0, 2, num_workers=workers)
        loader = DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                            collate_fn=keep_packed)
        for _ in loader:  # warm-up epoch
            pass
        n, t = 0, time.perf_counter()
        for _ in range(args.epochs):
            for batch in loader:
                n += len(batch["row"])
        rates.append(n / (time.perf_counter() - t))
    print(f"\n{args.scenes}: {len(stream)} train frames, batch 2, 16,384 points per frame, {args.epochs} epochs")
    print(f"{'workers':>7} {'frames/s':>9} {'vs 0 workers':>13}")
    for workers, r in zip((0, 2), rates):
        print(f"{workers:>7} {r:>9.1f} {r / rates[0]:>12.2f}x")
    cloud = torch.rand(1, 8192, 3, generator=torch.Generator().manual_seed(0))
    times = {}
    for name, kw in (("PyTorch loop", {"use_fpsample": False}), ("fpsample", {})):
        farthest_point_sample(cloud, 1024, use_pytorch3d=False, **kw)  # warm-up
        t = time.perf_counter()
        for _ in range(5):
            farthest_point_sample(cloud, 1024, use_pytorch3d=False, **kw)
        times[name] = (time.perf_counter() - t) / 5
    ratio = times["PyTorch loop"] / times["fpsample"]
    each = ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in times.items())
    print(f"\nFPS 8,192 -> 1,024 points, one cloud, CPU: {each} (loop / fpsample {ratio:.1f}x; training uses "
          "fpsample when the fps extra is installed)")


def main_s3(args) -> None:
    """Both layouts on an S3-compatible server (moto on loopback), as a shared team bucket would hold them."""
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    try:
        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        cache = open_cache(args.cache)
        terms = contrastive_terms(cache)
        rows = cache.done_rows("train")
        folder = tempfile.mkdtemp(prefix="bench-loader-")
        write_per_shape(cache, rows, folder, terms)
        fs.put(folder, "s3://bench/per-shape", recursive=True)
        fs.put(cache.loc.root, "s3://bench/cache.zarr", recursive=True)
        shutil.rmtree(folder, ignore_errors=True)
        results = []
        for workers in (0, 2):
            keep = {"persistent_workers": workers > 0}
            stream = ObjectStream("s3://bench/cache.zarr", StreamConfig())
            stream.set_position(0, 0, args.batch_size, num_workers=workers)
            s = rate(DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=keep_packed, **keep),
                     args.epochs, False)
            b = rate(DataLoader(PerShapeFiles("s3://bench/per-shape", rows.tolist(), terms),
                                batch_size=args.batch_size, num_workers=workers, shuffle=True, drop_last=True, **keep),
                     args.epochs, False)
            results.append((workers, s, b))
    finally:
        server.stop()
    print(f"s3:// on a loopback S3 server (moto): {len(rows)} train shapes, {args.epochs} epochs, "
          f"batch {args.batch_size}")
    print(f"{'workers':>7} {'stream samples/s':>17} {'per-shape samples/s':>20} {'ratio':>6}")
    for workers, s, b in results:
        print(f"{workers:>7} {s:>17.0f} {b:>20.0f} {s / b:>6.2f}")


if __name__ == "__main__":
    main()
