"""Fine-tuning table: protocol (Full / MLP-3 / Linear) x init (a checkpoint vs random) x seeds, OA and mAcc;
with ``--task segment``, part segmentation (init x seeds, instance and class mIoU).

    .venv/bin/python scripts/finetune_table.py caches/demo-scan-obj_bg.zarr --init runs/demo-s1/last.pt \
        --seeds 3 --epochs 10 [--out runs/finetune-table]
    .venv/bin/python scripts/finetune_table.py caches/demo.zarr --task segment --init runs/demo-s1/last.pt \
        --seeds 3 --epochs 4 --num-points 512 --out runs/segment-table

Each cell trains ``train finetune`` from scratch with the cache's recipe and
the overrides given here (CPU-sized: 1,024 points, 32 groups as the tiny preset), then reports
the best test accuracy (the published protocol selects on test) and the last
one, mean +- std over seeds, and the fine-tuning speed (samples/s of the
training steps, from metrics.csv). The linear-SVM probe of the same encoders
is printed beside it for reference.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np

from cache_schema import open_cache
from train.downstream.finetune import FinetuneConfig, train_finetune
from train.eval import frozen

METRICS = {"classify": ("overall_accuracy", "mean_class_accuracy", "OA", "mAcc"),
           "segment": ("instance_miou", "class_miou", "Inst.mIoU", "Cls.mIoU")}


def run_cell(args, protocol: str, init: str, seed: int) -> dict:
    name = "ckpt" if init != "random" else "random"
    out = os.path.join(args.out, f"{protocol}-{name}-seed{seed}")
    if args.task == "segment":
        from train.downstream.segment import SegmentConfig, train_segment

        metrics = train_segment(SegmentConfig(cache=args.cache, out=out, init=init, model=args.model, seed=seed,
                                              epochs=args.epochs, warmup_epochs=1, num_points=args.num_points,
                                              workers=0, overwrite=True), progress=False)
    else:
        metrics = train_finetune(FinetuneConfig(cache=args.cache, out=out, init=init, protocol=protocol,
                                                model=args.model, seed=seed, epochs=args.epochs, warmup_epochs=1,
                                                num_points=args.num_points, num_group=args.num_group, workers=0,
                                                overwrite=True), progress=False)
    a, b = METRICS[args.task][:2]
    with open(os.path.join(out, "validation.csv")) as f:
        last = list(csv.DictReader(f))[-1]
    with open(os.path.join(out, "metrics.csv")) as f:
        speed = [float(r["samples_per_s"]) for r in csv.DictReader(f)]
    return {"best_a": metrics[f"best/{a}"], "best_b": metrics[f"best/{b}"], "last_a": float(last[a]),
            "last_b": float(last[b]), "samples_per_s": float(np.median(speed))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache")
    ap.add_argument("--init", required=True, help="the pre-trained checkpoint compared with random init")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--num-points", type=int, default=1024)
    ap.add_argument("--num-group", type=int, default=32)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--protocols", default="full,mlp3,linear")
    ap.add_argument("--task", choices=("classify", "segment"), default="classify")
    ap.add_argument("--out", default="runs/finetune-table")
    args = ap.parse_args()
    rows = []
    if args.task == "segment":
        args.protocols = "full"
    for protocol in args.protocols.split(","):
        for init in (args.init, "random"):
            cells = [run_cell(args, protocol, init, seed) for seed in range(args.seeds)]
            rows.append((protocol, "pre-trained" if init != "random" else "random",
                         {k: (np.mean([c[k] for c in cells]), np.std([c[k] for c in cells])) for k in cells[0]}))
            print(protocol, rows[-1][1], {k: round(v[0], 4) for k, v in rows[-1][2].items()}, flush=True)
    cache = open_cache(args.cache)
    probe = {} if args.task == "segment" else {
        name: frozen.linear_probe(frozen.load_student(ckpt, cache, args.model), cache, args.num_points)
        ["accuracy"] for name, ckpt in (("pre-trained", args.init), ("random", "random"))}
    print(f"\n{args.cache}: {cache.num_rows} shapes, {len(cache.label_names)} classes, {args.epochs} epochs, "
          f"{args.num_points} points, {args.seeds} seeds (mean +- std); best = best test epoch (the published "
          "protocol), last = final epoch")
    _, _, a, b = METRICS[args.task]
    print(f"| protocol | init | {a} best | {b} best | {a} last | {b} last | samples/s |")
    print("|---|---|---|---|---|---|---|")
    for protocol, init, s in rows:
        f = lambda k: f"{100 * s[k][0]:.1f} +- {100 * s[k][1]:.1f}"  # noqa: E731
        print(f"| {protocol} | {init} | {f('best_a')} | {f('best_b')} | {f('last_a')} | {f('last_b')} | "
              f"{s['samples_per_s'][0]:.1f} |")
    if probe:
        print(f"\nlinear SVM probe on frozen features: pre-trained {100 * probe['pre-trained']:.1f}, "
              f"random {100 * probe['random']:.1f}")
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"rows": [(p, i, {k: list(v) for k, v in s.items()}) for p, i, s in rows], "probe": probe,
                   "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
