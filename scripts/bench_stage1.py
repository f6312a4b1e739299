"""Stage-1 step cost with cached teachers vs. teachers computed online (ULIP-style), side by side.

    .venv/bin/python scripts/bench_stage1.py caches/demo.zarr [--steps 20] [--online-steps 3]

Cached: the stage-1 step as `train stage1` runs it (stream + tiny student +
InfoNCE), with data-wait %, and the share of the step spent grouping (FPS +
kNN). Online: the same step plus, per batch, CLIP ViT-B/16 and DINOv2 ViT-B/14
image forwards on one stored view per shape and a CLIP text forward on one
caption (full-size architectures, random weights: the same cost as pretrained).
Last, FPS per cloud: this project's torch FPS vs. the `fpsample` package.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from cache_schema import open_cache
from preprocess.teachers import load_teacher
from train.data.objects import ObjectStream, StreamConfig
from train.losses import MultiTeacherLoss
from train.models.encoders import create_encoder
from train.models.student import Student
from train.ops import farthest_point_sample


def _epochs(stream: ObjectStream, batch: int):
    """Batches over as many epochs as asked for, as the trainer reads them."""
    stream.set_position(0, 0, batch, num_workers=2)
    loader = DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True)  # the trainer's loader
    while True:
        yield from loader


def run(url: str, steps: int, batch: int, model_name: str, online: bool) -> dict:
    cache = open_cache(url)
    stream = ObjectStream(url, StreamConfig())
    model = Student(create_encoder(model_name), stream.head_dims)
    loss_fn = MultiTeacherLoss({t: 1.0 for t in stream.terms})
    head_of = {term: t for term, (t, _) in stream.terms.items()}
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4)
    teachers = ({"clip": load_teacher("clip-vit-b16-random", batch_size=batch),
                 "dino": load_teacher("dinov2-vitb14-random", batch_size=batch)} if online else {})
    rgb, captions = cache.array("views/rgb"), cache.array("captions")
    loader = _epochs(stream, batch)
    wait = total = grouping = 0.0
    done = 0
    for i in range(steps + 1):  # the first step warms up and is not counted
        t0 = time.perf_counter()
        b = next(loader)
        t_wait = time.perf_counter() - t0
        if online:
            rows = b["row"].numpy()
            images = np.stack([rgb[int(r), int(r) % rgb.shape[1]] for r in rows])
            texts = [str(captions[int(r), 0]) for r in rows]
            teachers["clip"].encode_images(images)
            teachers["dino"].encode_images(images)
            teachers["clip"].encode_texts(texts)
        out = model(b["points"])
        loss = loss_fn(out, {t: b[t] for t in head_of}, head_of)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t_step = time.perf_counter() - t0
        with torch.no_grad():
            tg = time.perf_counter()
            model.encoder.group_divider(b["points"])
            t_group = time.perf_counter() - tg
        if i > 0:
            wait, total, grouping, done = wait + t_wait, total + t_step, grouping + t_group, done + len(b["points"])
    return {"samples_per_s": done / total, "wait_pct": 100 * wait / total, "group_pct": 100 * grouping / total}


def fps_times(n: int, k: int, repeats: int = 5) -> tuple[float, float]:
    import fpsample

    pts = np.random.default_rng(0).random((n, 3), dtype=np.float32)
    t = time.perf_counter()
    for _ in range(repeats):
        farthest_point_sample(torch.from_numpy(pts)[None], k)
    ours = (time.perf_counter() - t) / repeats
    t = time.perf_counter()
    for _ in range(repeats):
        fpsample.bucket_fps_kdline_sampling(pts, k, h=5)
    theirs = (time.perf_counter() - t) / repeats
    return ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--online-steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="tiny")
    args = ap.parse_args()
    cached = run(args.cache, args.steps, args.batch_size, args.model, online=False)
    online = run(args.cache, args.online_steps, args.batch_size, args.model, online=True)
    print(f"stage-1 step, {args.model} student, batch {args.batch_size}, 1024 points, this CPU")
    print(f"{'teachers':<28} {'samples/s':>10} {'vs online':>10} {'data wait':>10} {'grouping':>9}")
    for name, r in (("cached (this project)", cached), ("online ViT-B/16 + ViT-B/14", online)):
        print(f"{name:<28} {r['samples_per_s']:>10.1f} {r['samples_per_s'] / online['samples_per_s']:>9.1f}x "
              f"{r['wait_pct']:>9.1f}% {r['group_pct']:>8.1f}%")
    print(f"\n{'FPS per cloud':<16} {'torch (ms)':>11} {'fpsample (ms)':>14} {'torch/fpsample':>15}")
    for n, k in ((1024, 64), (8192, 1024)):
        ours, theirs = fps_times(n, k)
        print(f"{f'{n} -> {k}':<16} {1000 * ours:>11.2f} {1000 * theirs:>14.2f} {ours / theirs:>15.1f}")


if __name__ == "__main__":
    main()
