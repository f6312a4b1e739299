"""`cache info`: what a cache holds, where it came from and what it costs on disk."""

from __future__ import annotations

from collections import Counter
from typing import Any

from cache_schema.fingerprint import array_paths
from cache_schema.layout import DONE, FAILED, PENDING
from cache_schema.reader import open_cache


def _stored_bytes(cache: Any, path: str) -> int:
    try:
        return int(cache.loc.fs.du(cache.loc.path(path)))
    except FileNotFoundError:
        return 0


def summarize(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready summary of the cache at ``url`` (works on unfinished stores too)."""
    cache = open_cache(url, storage_options, allow_incomplete=True)
    status = cache.status
    arrays = {}
    for path in array_paths(cache.group):
        arr = cache.group[path]
        arrays[path] = {"shape": list(arr.shape), "dtype": "str" if arr.dtype.kind in "UOT" else str(arr.dtype), "chunks": list(arr.chunks),
                        "stored_bytes": _stored_bytes(cache, path)}
    reasons = cache.array(cache.layout.status_path + "_reason")[:]
    failures = Counter(str(r).split(":", 1)[0] for r in reasons[status == FAILED])
    notes = Counter(str(r).split(":", 1)[0] for r in reasons[(status == DONE) & (reasons != "")])
    summary: dict[str, Any] = {
        "url": cache.loc.url,
        "kind": cache.kind,
        "schema": f"{cache.attrs.schema} {cache.attrs.schema_version}",
        "dataset": cache.attrs.dataset,
        "rows": cache.num_rows,
        "rows_done": int((status == DONE).sum()),
        "rows_failed": int((status == FAILED).sum()),
        "rows_pending": int((status == PENDING).sum()),
        "failures_by_reason": dict(failures.most_common()),
        "notes_on_done_rows": dict(notes.most_common()),
        "build": cache.build,
        "tool": cache.attrs.tool,
        "num_classes": len(cache.attrs.label_names),
        "num_parts": len(cache.attrs.config.get("parts", {}).get("names", [])),
        "teachers": {n: t.to_dict() for n, t in cache.teachers.items()},
        "splits": {n: int(cache.array(f"split/{n}").shape[0]) for n in cache.split_names},
        "config": cache.attrs.config,
        "chunking": {"target_bytes": cache.chunking.target_bytes, "block_rows": cache.chunking.block_rows},
        "arrays": arrays,
        "stored_bytes": int(cache.loc.fs.du(cache.loc.root)),
    }
    for family, path in cache.layout.offsets_paths.items():
        summary[f"num_{family}"] = int(arrays[path]["shape"][0] and cache.array(path)[-1]) if path in arrays else None
    return summary


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_summary(s: dict[str, Any]) -> str:
    """The summary as aligned text for people."""
    b = s["build"]
    lines = [
        f"{s['url']}",
        f"  kind        {s['kind']} ({s['schema']})",
        f"  dataset     {s['dataset'].get('name')}  from {s['dataset'].get('source_root', '?')}",
        f"  rows        {s['rows']}: {s['rows_done']} done, {s['rows_failed']} failed, {s['rows_pending']} pending",
        f"  build       {b.get('state')}  finalized {b.get('finalized', '-')}  by {s['tool'].get('name')} {s['tool'].get('version')}",
        f"  fingerprint {b.get('fingerprint') or '-'}",
        f"  on disk     {human_bytes(s['stored_bytes'])}  (chunks ~{human_bytes(s['chunking']['target_bytes'])}, "
        f"blocks of {s['chunking']['block_rows']} rows)",
    ]
    for reason, n in s["failures_by_reason"].items():
        lines.append(f"    failed x{n}: {reason}")
    for note, n in s["notes_on_done_rows"].items():
        lines.append(f"    note x{n}: {note}")
    if s["kind"] == "scenes":
        lines.append(f"  ragged      {s.get('num_points')} points, {s.get('num_pairs')} point-pixel pairs")
    if s["kind"] == "rooms":
        boxes = f", {s['num_boxes']} boxes" if s.get("num_boxes") is not None else ""
        lines.append(f"  ragged      {s.get('num_points')} points{boxes}")
    lines.append("  splits      " + (", ".join(f"{n} ({c})" for n, c in s["splits"].items()) or "-"))
    lines.append(f"  classes     {s['num_classes']}")
    if s.get("num_parts"):
        lines.append(f"  parts       {s['num_parts']} (per-point part_label; config.parts gives each class its parts)")
    lines.append("  teachers")
    for name, t in s["teachers"].items():
        trained = "pretrained" if t["pretrained"] else "random init, NOT pretrained"
        lines.append(f"    {name:<20} {t['library']} {t['model']} [{t['pretrained_tag']}] dim {t['dim']} "
                     f"{t['dtype']} roles {','.join(t['roles'])} ({trained})")
    lines.append("  arrays")
    width = max((len(p) for p in s["arrays"]), default=0)
    for path, a in s["arrays"].items():
        lines.append(f"    {path:<{width}}  {str(tuple(a['shape'])):<22} {a['dtype']:<14} "
                     f"chunks {str(tuple(a['chunks'])):<20} {human_bytes(a['stored_bytes']):>10}")
    return "\n".join(lines)
