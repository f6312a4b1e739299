"""The `cache` command: inspect, check and unlock caches (local paths or fsspec URLs).

Written with argparse rather than typer on purpose: the contract package
depends on numpy, zarr, numcodecs and fsspec only, so that anyone can read and
check a cache without the trainer's or the builder's dependencies.

    cache info caches/shapenet.zarr [--json]
    cache validate s3://bucket/shapenet.zarr
    cache unlock caches/shapenet.zarr
    cache example caches/example.zarr --kind scenes
    cache show caches/demo.zarr --out sheet.png [--rows 8] [--ids ID ...]      # needs matplotlib (viz extra)
    cache show caches/demo-scenes.zarr --out frame.png [--frame 3] [--color-by label]
    cache show caches/demo-rooms.zarr --out room.png [--frame 2]                 # a room from above, by class
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from cache_schema.errors import CacheError
from cache_schema.storage import parse_storage_options


def _storage_options(pairs: list[str]) -> dict[str, Any]:
    try:
        return parse_storage_options(pairs)
    except ValueError as e:
        raise SystemExit(str(e)) from None


def _info(args: argparse.Namespace) -> int:
    from cache_schema.info import format_summary, summarize

    s = summarize(args.path, _storage_options(args.storage_option))
    print(json.dumps(s, indent=2, default=str) if args.json else format_summary(s))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from cache_schema.validate import validate

    problems = validate(args.path, _storage_options(args.storage_option), workers=args.workers,
                        scheduler=args.scheduler)
    if args.json:
        print(json.dumps({"valid": not problems, "problems": [p.__dict__ for p in problems]}, indent=2))
    elif problems:
        print(f"{args.path}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
    else:
        print(f"{args.path}: valid")
    return 1 if problems else 0


def _unlock(args: argparse.Namespace) -> int:
    from cache_schema.lock import break_lock, describe
    from cache_schema.storage import locate

    held = break_lock(locate(args.path, _storage_options(args.storage_option)))
    print(f"removed the writer lock of {describe(held)}" if held else f"{args.path} was not locked")
    return 0


def _example(args: argparse.Namespace) -> int:
    from cache_schema.example import write_example

    fp = write_example(args.path, args.kind, overwrite=args.overwrite)
    print(f"wrote a synthetic {args.kind} cache to {args.path} ({fp})")
    return 0


def _show(args: argparse.Namespace) -> int:
    from cache_schema.show import show

    out = show(args.path, args.out, rows=args.rows, ids=args.ids, frame=args.frame, color_by=args.color_by,
               storage_options=_storage_options(args.storage_option))
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cache", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from cache_schema.metadata import SCHEMA_VERSION, tool_version

    parser.add_argument("--version", action="version",
                        version=f"teacher-cache {tool_version()} (cache schema {SCHEMA_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("path", help="cache location: a local path or an fsspec URL (file://, memory://, s3://...)")
    common.add_argument("--storage-option", "-o", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option, e.g. -o anon=true (repeatable; values parsed as JSON when possible)")
    p = sub.add_parser("info", parents=[common], help="print kind, sizes, teachers, splits, provenance and bytes")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_info)
    p = sub.add_parser("validate", parents=[common],
                       help="check layout, dtypes, shapes, offsets, finite teachers, row status, every chunk; "
                            "exit 1 with a list of problems if any")
    p.add_argument("--json", action="store_true", help="print {valid, problems} as JSON")
    p.add_argument("--workers", type=int, default=None,
                   help="threads checking blocks at once (default: up to 4); memory grows with it, a few blocks each")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                   help="check the blocks on this Dask cluster instead (its workers need this package)")
    p.set_defaults(func=_validate)
    p = sub.add_parser("unlock", parents=[common], help="remove a writer lock left by a dead build")
    p.set_defaults(func=_unlock)
    p = sub.add_parser("example", parents=[common], help="write a small synthetic cache (to learn the layout)")
    p.add_argument("--kind", choices=("objects", "scenes", "rooms"), default="objects")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at PATH")
    p.set_defaults(func=_example)
    p = sub.add_parser("show", parents=[common],
                       help="draw a PNG: objects -> contact sheet of shapes; scenes -> pairs over camera images + BEV; "
                            "rooms -> a room from above by class and colour")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--rows", type=int, default=6, help="objects: how many shapes (the first done ones)")
    p.add_argument("--ids", nargs="+", help="objects: these shape ids; scenes, rooms: this frame or room id")
    p.add_argument("--frame", type=int, help="scenes, rooms: frame or room index (default: the first done one)")
    p.add_argument("--color-by", choices=("depth", "label"), default="depth", help="scenes: colour of the points")
    p.set_defaults(func=_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CacheError, KeyError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
