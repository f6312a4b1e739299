"""Print the demo's evaluation table: each checkpoint next to the random-init baseline.

    .venv/bin/python scripts/demo_results.py caches/demo.zarr runs/demo-s1/best.pt [more.pt ...]
"""

from __future__ import annotations

import sys

from train import evaluate


def main(cache_url: str, ckpts: list[str]) -> None:
    cache = evaluate.open_for_eval(cache_url)
    rows = []
    for ckpt in ["random", *ckpts]:
        model = evaluate.load_student(ckpt, cache, "tiny")
        zs = evaluate.zeroshot(model, cache)
        lin = evaluate.linear_probe(model, cache)
        few = evaluate.fewshot(model, cache, n_way=5, m_shot=10)
        rows.append((ckpt, zs["top1"], zs["top5"], lin["accuracy"], few["mean"], few["std"]))
    chance = 1 / len(cache.label_names)
    print(f"{cache_url}: {len(cache.label_names)} classes (zero-shot chance {chance:.0%})")
    print(f"{'encoder':<32} {'zero-shot top1':>15} {'top5':>7} {'linear':>8} {'5-way 10-shot':>16}")
    for ckpt, top1, top5, lin, mean, std in rows:
        print(f"{ckpt:<32} {top1:>15.1%} {top5:>7.1%} {lin:>8.1%} {mean:>9.1%} ± {std:.1%}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
