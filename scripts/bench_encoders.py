"""Training-step speed of every registered encoder family at its official size, next to the official code.

    make bench-encoders                                           # our rows only (reference columns "-")
    make bench-encoders BENCH_ENCODERS_ARGS="--reference-point-mae /tmp/ref/Point-MAE \\
        --reference-point-m2ae /tmp/ref/Point-M2AE"
    .venv/bin/python scripts/bench_encoders.py [--batch 8] [--iters 5] [--warmup 1] \\
        [--recipes modelnet40 scanobjectnn] [--profile] [--reference-point-mae DIR] [--reference-point-m2ae DIR]

The reference directories are clones of the official repositories (nothing of them is copied into this one):

    git clone https://github.com/Pang-Yatian/Point-MAE /tmp/ref/Point-MAE
    git clone https://github.com/ZrrSkywalker/Point-M2AE /tmp/ref/Point-M2AE

What it measures, per family (the preset named after the family: ``point-mae``, ``point-m2ae``) and recipe
(``modelnet40``: the official ModelNet40 fine-tuning encoder at 1,024 points, by default; ``scanobjectnn``: the
ScanObjectNN one at 2,048 points, about twice the time): one training step without a head, in train mode
(DropPath and BatchNorm as when fine-tuning): ``tokens, global_feature = encoder(points)``, then
``global_feature.sum().backward()``, ``zero_grad(set_to_none=True)`` outside the clock. The official model is the
repository's fine-tuning classifier built from its config's ``model:`` section with ``cls_head_finetune``
replaced by an Identity, so it returns the same global feature (the head's input); our encoder's weights are
loaded into it, and "max diff" is the largest difference of the two global features in eval mode (the two
compute the same function when it is ~1e-6). Its CUDA extensions are stood in for by our own FPS and kNN
(``scripts/reference_ops.py``), so grouping costs the same on both sides and the ratio measures the rest.

Warm-up steps, then ``--iters`` timed steps of each side alternately (which side goes first alternates too),
so load from other processes falls on both. Times are the median (interquartile range) in ms per batch;
"ours/ref" is the ratio of the medians: below 1 means our formulation is faster. "saved MiB" is what autograd
keeps for the backward pass (tensors saved by the forward, parameters excluded), the bulk of a step's memory.
Threads: torch's default. Never asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from reference_ops import build_reference, no_cuda

from train.models.encoders import FAMILIES, create_encoder
from train.models.encoders.official import family_module

RECIPE_POINTS = {"modelnet40": 1024, "scanobjectnn": 2048}
# the official fine-tuning configs (relative to each repository) of every family and recipe
REFERENCE_CFGS = {
    "point-mae": {"modelnet40": "cfgs/finetune_modelnet.yaml", "scanobjectnn": "cfgs/finetune_scan_objbg.yaml"},
    "point-m2ae": {"modelnet40": "cfgs/fine-tuning/modelnet40.yaml",
                   "scanobjectnn": "cfgs/fine-tuning/scan_obj-bg.yaml"},
}


@dataclass
class Side:
    """One implementation of one row: its model, its training-step loss and what was measured."""

    model: torch.nn.Module
    loss: Callable[[], torch.Tensor]
    total: list[float] = field(default_factory=list)    # s per forward + backward
    forward: list[float] = field(default_factory=list)  # s per forward
    saved_bytes: int = 0

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


@dataclass
class Row:
    family: str
    recipe: str
    points: int
    batch: int
    ours: Side
    ref: Side | None = None
    max_diff: float | None = None
    note: str = ""


def sample_points(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    """(B, N, 3) uniform in a cube, centred and scaled into the unit ball (the datasets' pc_normalize)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(batch, n, 3, generator=g) * 2 - 1
    pts = pts - pts.mean(dim=1, keepdim=True)
    return pts / pts.norm(dim=-1).amax(dim=1).view(batch, 1, 1)


def saved_for_backward(side: Side) -> int:
    """Bytes autograd saves in one forward of ``side`` (distinct storages, parameters left out); runs the
    backward too, so it doubles as a warm-up step."""
    params = {p.untyped_storage().data_ptr() for p in side.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = side.loss()
    loss.backward()
    side.model.zero_grad(set_to_none=True)
    return sum(seen.values())


def timed_step(side: Side) -> None:
    t0 = time.perf_counter()
    loss = side.loss()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    side.model.zero_grad(set_to_none=True)
    side.forward.append(t1 - t0)
    side.total.append(t2 - t0)


def same_function(ours: torch.nn.Module, ref: torch.nn.Module, points: torch.Tensor) -> float:
    """Largest |difference| of the global features in eval mode (two clouds of ``points``)."""
    ours.eval()
    ref.eval()
    with torch.no_grad():
        diff = (ours(points[:2])[1] - ref(points[:2])).abs().max().item()
    ours.train()
    ref.train()
    return diff


def build_row(family: str, recipe: str, batch: int, reference_dir: str | None, seed: int) -> Row:
    overrides = FAMILIES[family].recipes.get(recipe, {}).get("encoder", {})
    torch.manual_seed(seed)
    encoder = create_encoder(family, **overrides).train()
    points = sample_points(batch, RECIPE_POINTS[recipe], seed)
    row = Row(family, recipe, points.shape[1], batch, Side(encoder, lambda: encoder(points)[1].sum()))
    cfg = REFERENCE_CFGS.get(family, {}).get(recipe)
    if reference_dir is None or cfg is None:
        return row
    ref = build_reference(reference_dir, cfg).train()
    row.ref = Side(ref, lambda: ref(points).sum())
    try:  # the same weights on both sides: then both compute the same function (checked below)
        ref.load_state_dict(family_module(FAMILIES[family]).to_official(encoder.state_dict()))
        row.max_diff = same_function(encoder, ref, points)
    except RuntimeError as e:  # a family whose names the official model does not share: time it anyway
        row.note = f"weights not mapped ({str(e).splitlines()[0]})"
    return row


def measure(row: Row, warmup: int, iters: int) -> None:
    sides = [row.ours] + ([row.ref] if row.ref else [])
    for side in sides:
        side.saved_bytes = saved_for_backward(side)
    for _ in range(warmup - 1):
        for side in sides:
            timed_step(side)
    for side in sides:
        side.total.clear()
        side.forward.clear()
    for i in range(iters):
        for side in sides if i % 2 == 0 else sides[::-1]:
            timed_step(side)


def spread(xs: list[float]) -> str:
    """'median (p25-p75)' in ms."""
    ms = sorted(1e3 * x for x in xs)
    if len(ms) < 2:
        return f"{ms[0]:.0f}"
    q = statistics.quantiles(ms, n=4, method="inclusive")
    return f"{statistics.median(ms):.0f} ({q[0]:.0f}-{q[2]:.0f})"


def table(rows: list[Row]) -> str:
    head = ["encoder", "recipe", "points", "batch", "params ours / ref", "ours ms fwd+bwd", "ref ms fwd+bwd",
            "ours/ref", "fwd ms ours / ref", "fwd ours/ref", "saved MiB ours / ref", "max diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        o, f = r.ours, r.ref
        med = statistics.median
        cells = [r.family, r.recipe, str(r.points), str(r.batch),
                 f"{o.params / 1e6:.2f}M / " + (f"{f.params / 1e6:.2f}M" if f else "-"),
                 spread(o.total), spread(f.total) if f else "-",
                 f"{med(o.total) / med(f.total):.2f}" if f else "-",
                 f"{1e3 * med(o.forward):.0f} / " + (f"{1e3 * med(f.forward):.0f}" if f else "-"),
                 f"{med(o.forward) / med(f.forward):.2f}" if f else "-",
                 f"{o.saved_bytes / 2**20:.0f} / " + (f"{f.saved_bytes / 2**20:.0f}" if f else "-"),
                 f"{r.max_diff:.1e}" if r.max_diff is not None else (r.note or "-")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _git(args: list[str], cwd: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def provenance(references: dict[str, str | None]) -> list[str]:
    """Machine, software and code lines printed under the table."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    here = os.path.dirname(os.path.abspath(__file__))
    commit = _git(["rev-parse", "--short", "HEAD"], here) or "unknown"
    if _git(["status", "--porcelain", "--untracked-files=no"], here):
        commit += " (with uncommitted changes)"
    lines = [f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
             f"date: {datetime.date.today().isoformat()}, commit {commit}"]
    for family, path in references.items():
        if path:
            lines.append(f"reference {family}: {path} @ {_git(['rev-parse', '--short', 'HEAD'], path) or 'not a git checkout'}")
    return lines


def profile_step(side: Side, name: str, top: int) -> None:
    """The ``top`` ops by self CPU time of one forward + backward."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        side.loss().backward()
    side.model.zero_grad(set_to_none=True)
    print(f"\n{name}: top {top} ops by self CPU time, one forward + backward")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side (the first measures memory)")
    p.add_argument("--recipes", nargs="+", choices=sorted(RECIPE_POINTS), default=["modelnet40"])
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    p.add_argument("--reference-point-mae", metavar="DIR", help="a clone of github.com/Pang-Yatian/Point-MAE")
    p.add_argument("--reference-point-m2ae", metavar="DIR", help="a clone of github.com/ZrrSkywalker/Point-M2AE")
    p.add_argument("--profile", type=int, nargs="?", const=12, default=0, metavar="TOP",
                   help="after the table, the top ops of one step of each side")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.iters < 1:
        p.error("--warmup and --iters must be at least 1")
    references = {"point-mae": args.reference_point_mae, "point-m2ae": args.reference_point_m2ae}
    start, rows = time.perf_counter(), []
    with no_cuda():  # the official code calls .cuda(); ours never does
        for recipe in args.recipes:
            for family in args.families:
                row = build_row(family, recipe, args.batch, references.get(family), args.seed)
                measure(row, args.warmup, args.iters)
                rows.append(row)
                ref = f", ref {1e3 * statistics.median(row.ref.total):.0f} ms" if row.ref else ""
                print(f"{family} {recipe}: ours {1e3 * statistics.median(row.ours.total):.0f} ms{ref} "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        print(table(rows))
        print()
        for line in provenance({f: references.get(f) for f in args.families}):
            print(line)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"peak RSS of the run: {rss:.0f} MiB; wall time {time.perf_counter() - start:.0f} s")
        for row in rows if args.profile else []:
            for name, side in (("ours", row.ours), ("reference", row.ref)):
                if side is not None:
                    profile_step(side, f"{row.family} {row.recipe} {name}", args.profile)


if __name__ == "__main__":
    main()
