"""Reproduce a table of the paper: its rows' runs for every seed, then mean +- std beside the paper's figures.

    python scripts/reproduce.py table4 --seeds 0,1,2 --out runs/paper           # real caches (make cache ...), GPUs
    python scripts/reproduce.py table4 --demo --seeds 0,1 --out runs/paper-demo  # built-in demo caches, a CPU
    python scripts/reproduce.py table3 --launch "torchrun --nproc_per_node=8" --seeds 0,1,2   # each run on 8 GPUs,
                                                                                 # its batch split over them
    python scripts/reproduce.py --list                                           # the tables there are

Finished runs are kept and reused (pre-training once per encoder and seed, shared by every row that starts from
it); a stopped run resumes. The table is printed and written to OUT/<table>.md. See train/reproduce.py and
configs/paper/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cache_schema.errors import CacheError
from train.reproduce import CONFIG_ROOT, launch_processes, launcher, list_tables, reproduce, train_cli


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds is a comma-separated list of integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds needs distinct non-negative integers, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", nargs="?", help=f"a folder of {CONFIG_ROOT}, e.g. table4")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--demo", action="store_true", help="built-in demo caches, tiny encoders, short schedules (CPU)")
    p.add_argument("--out", default=None, help="run folders go to OUT/seed<N>/... (default runs/paper, "
                                               "runs/paper-demo with --demo)")
    p.add_argument("--configs", default=CONFIG_ROOT, help="the folder of table configs")
    p.add_argument("--launch", default=None, help="start each run as 'LAUNCH -m train ...' in its own process, e.g. "
                                                  "'torchrun --nproc_per_node=8' (default: in this process)")
    p.add_argument("--processes", type=int, default=None,
                   help="processes each launched run trains on; every run's batch is split over them so that the "
                        "global batch is the paper's (default: torchrun's --nproc_per_node x --nnodes from "
                        "--launch, else 1)")
    p.add_argument("--list", action="store_true", help="list the tables and exit")
    args = p.parse_args(argv)
    if args.list or not args.table:
        print("\n".join(list_tables(args.configs)))
        return 0
    out = args.out or ("runs/paper-demo" if args.demo else "runs/paper")
    try:
        processes = args.processes if args.processes is not None else launch_processes(args.launch)
        if args.launch and args.processes is None and processes == 1 and "torchrun" not in args.launch \
                and "torch.distributed.run" not in args.launch:
            print(f"note: --launch {args.launch!r} is not torchrun: each run's batch is taken as per process; pass "
                  "--processes N if it starts N processes", file=sys.stderr)
        if processes < 1 or (processes > 1 and not args.launch):
            raise ValueError(f"--processes {processes}: runs without --launch train in this one process"
                             if processes > 1 else f"--processes is a positive count, got {processes}")
        text = reproduce(args.table, args.seeds, out, demo=args.demo, root=args.configs,
                         runner=launcher(args.launch) if args.launch else train_cli, processes=processes)
    except (ValueError, FileNotFoundError, RuntimeError, CacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{args.table}{'-demo' if args.demo else ''}.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
