"""Does image-to-LiDAR pre-training help with few labels? Fine-tune with 1% of the labelled frames from the
pre-trained backbone and from random initialisation, over several seeds, and print the mIoU table.

    .venv/bin/python scripts/fusion_label_efficiency.py caches/demo-scenes.zarr [--labels 1%] [--seeds 3]

One pre-training run (``--pretrain-steps``), then per seed one fine-tuning run
from it and one from random init (``--finetune-steps`` each, same labelled
frames for both), each evaluated on the validation split (LiDAR-only path).
Results go to ``OUT/results.json`` (default ``runs/fusion-label-efficiency``);
finished runs are reused, so an interrupted comparison continues.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from train.eval.lidar_segmentation import evaluate_seg
from train.stages.fusion import FusionRunConfig, train_fusion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache")
    ap.add_argument("--labels", default="1%")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", default="runs/fusion-label-efficiency")
    args = ap.parse_args()
    model = dict(dim=args.dim, depth=args.depth, workers=args.workers)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {"pretrained": [], "random init": []}
    pre = os.path.join(args.out, "pretrain")
    if not os.path.exists(os.path.join(pre, "last.pt")):
        train_fusion(FusionRunConfig(cache=args.cache, out=pre, steps=args.pretrain_steps, **model), progress=False)
    for seed in range(args.seeds):
        for name, init in (("pretrained", os.path.join(pre, "last.pt")), ("random init", "random")):
            if len(results[name]) > seed:
                continue
            out = os.path.join(args.out, f"{'pre' if init != 'random' else 'rand'}-seed{seed}")
            train_fusion(FusionRunConfig(cache=args.cache, out=out, mode="finetune", labels=args.labels, init=init,
                                         steps=args.finetune_steps, seed=seed, **model), progress=False)
            results[name].append({"seed": seed, **evaluate_seg(os.path.join(out, "last.pt"), args.cache)})
            with open(path, "w") as f:
                json.dump(results, f, indent=2)
            print(f"{name} seed {seed}: mIoU {results[name][-1]['miou']:.3f}", flush=True)
    classes = list(results["pretrained"][0]["per_class_iou"])
    print(f"\n{args.cache}: fine-tuning on {args.labels} of the labelled frames for {args.finetune_steps} steps, "
          f"{args.seeds} seeds (pre-training: {args.pretrain_steps} steps, contrastive + regression); "
          "validation mIoU and per-class IoU in %, mean ± std")
    print(f"{'init':<12} {'mIoU':>12} {'accuracy':>12} " + " ".join(f"{c[:9]:>9}" for c in classes))
    for name, runs in results.items():
        miou = np.array([r["miou"] for r in runs]) * 100
        acc = np.array([r["accuracy"] for r in runs]) * 100
        per = [np.nanmean([np.nan if r["per_class_iou"][c] is None else r["per_class_iou"][c] for r in runs]) * 100
               for c in classes]
        print(f"{name:<12} {miou.mean():6.1f} ± {miou.std():3.1f} {acc.mean():6.1f} ± {acc.std():3.1f} "
              + " ".join(f"{p:>9.1f}" for p in per))


if __name__ == "__main__":
    main()
