"""Stage-2 ablations on the demo cache over several seeds, in the layout of the MMPD paper's Table 4.

    .venv/bin/python scripts/ablate_stage2.py caches/demo.zarr runs/demo-s1/last.pt [--steps 100] [--seeds 3]
    .venv/bin/python scripts/ablate_stage2.py ... --encoder-lr-scale 1 --variants full,no-token-shuffling \
        --out runs/ablate-stage2-full-lr        # the same variants with the encoder at the decoders' lr

Every variant starts from the same stage-1 checkpoint (except ``init random``)
and trains ``--steps`` stage-2 steps per seed; each run is then evaluated with
the linear SVM probe and 5-way 10-shot. The table prints mean ± std over the
seeds, next to the stage-1 checkpoint itself. Results are also written to
``OUT/ablation.json`` (default ``runs/ablate-stage2``); runs already there are
reused, so an interrupted ablation continues.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from train.eval import frozen
from train.stages.stage2 import Stage2Config, train_stage2

VARIANTS = {  # name -> Stage2Config overrides
    "full (local + global + shuffle)": dict(),
    "encoder at full lr (decoders' lr)": dict(encoder_lr_scale=1.0),
    "no token shuffling": dict(shuffle=False),
    "local only (no global)": dict(use_global=False),
    "global only (no local)": dict(local=False),
    "Point-MAE target (points, no features)": dict(target="points", use_global=False),
    "random init (no stage-1 start)": dict(init="random"),
}


def short_name(variant: str) -> str:
    """``"no token shuffling (...)"`` -> ``"no-token-shuffling"``: run folders and ``--variants``."""
    return variant.split(" (")[0].replace(" ", "-")


def evaluate_run(cache, ckpt: str) -> dict:
    model = frozen.load_student(ckpt, cache)
    return {"linear": frozen.linear_probe(model, cache)["accuracy"],
            "fewshot": frozen.svm_fewshot(model, cache, n_way=5, m_shot=10)["mean"],
            "zeroshot": frozen.zeroshot(model, cache)["top1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache")
    ap.add_argument("stage1")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/ablate-stage2")
    ap.add_argument("--encoder-lr-scale", type=float, default=None,
                    help="the encoder's lr as a share of the decoders' for every variant (default: stage-2's own, "
                         "0.1 from the checkpoint, 1 from random init)")
    ap.add_argument("--variants", default=",".join(short_name(v) for v in VARIANTS),
                    help="comma-separated short names of the variants to run (default: all)")
    args = ap.parse_args()
    chosen = args.variants.split(",")
    unknown = set(chosen) - {short_name(v) for v in VARIANTS}
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {[short_name(v) for v in VARIANTS]}")
    cache = frozen.open_for_eval(args.cache)
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "ablation.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    settings = {"stage1": args.stage1, "steps": args.steps, "encoder_lr_scale": args.encoder_lr_scale}
    if results.setdefault("_settings", settings) != settings:
        ap.error(f"{results_path} holds runs with {results['_settings']}, not {settings}; choose another --out")
    if "stage-1 checkpoint" not in results:
        results["stage-1 checkpoint"] = [evaluate_run(cache, args.stage1)]
    for name, overrides in VARIANTS.items():
        if short_name(name) not in chosen:
            continue
        if args.encoder_lr_scale is not None:
            overrides = {"encoder_lr_scale": args.encoder_lr_scale, **overrides}
        runs = results.setdefault(name, [])
        for seed in range(len(runs), args.seeds):
            out = os.path.join(args.out, f"{short_name(name)}-seed{seed}")
            cfg = Stage2Config(cache=args.cache, out=out, teacher=args.stage1, steps=args.steps, seed=seed,
                               workers=args.workers, **overrides)
            train_stage2(cfg, progress=False)
            runs.append({"seed": seed, **evaluate_run(cache, os.path.join(out, "last.pt"))})
            with open(results_path, "w") as f:
                json.dump(results, f, indent=2)
            print(f"{name} seed {seed}: {runs[-1]}", flush=True)
    scale = "stage-2's default" if args.encoder_lr_scale is None else args.encoder_lr_scale
    print(f"\n{args.cache}: stage-2 for {args.steps} steps from {args.stage1}, {args.seeds} seeds, encoder lr scale "
          f"{scale} (mean ± std; linear SVM probe, 5-way 10-shot, zero-shot through the carried-over text head)")
    print(f"{'variant':<42} {'local':>5} {'global':>6} {'shuffle':>7} {'linear':>14} {'5w10s':>14} {'zero-shot':>14}")
    for name, runs in results.items():
        if name == "_settings":
            continue
        o = VARIANTS.get(name)
        flags = ("-", "-", "-") if o is None else (
            "yes" if o.get("local", True) and o.get("target") != "points" else "no",
            "yes" if o.get("use_global", True) else "no",
            "yes" if o.get("shuffle", True) and o.get("target") != "points" else "no")
        cells = []
        for key in ("linear", "fewshot", "zeroshot"):
            v = np.array([r[key] for r in runs]) * 100
            cells.append(f"{v.mean():5.1f} ± {v.std():4.1f}" if len(v) > 1 else f"{v.mean():5.1f}")
        print(f"{name:<42} {flags[0]:>5} {flags[1]:>6} {flags[2]:>7} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")


if __name__ == "__main__":
    main()
