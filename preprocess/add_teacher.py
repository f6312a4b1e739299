"""Adding a teacher to a finished objects cache from its stored renders and captions.

No mesh is touched again: the new teacher embeds ``views/rgb`` (and
``views/depth`` for CLIP's depth role) and the stored captions, block by block,
for rows that are done; failed rows stay zero. The store is marked as building
while this runs and gets a new fingerprint at the end. An interrupted run is
simply started again (it redoes this teacher's blocks).
"""

from __future__ import annotations

import numpy as np

from cache_schema import DONE, CacheWriter, objects_layout
from cache_schema.writer import BlockWriter
from preprocess.build_common import RunOptions, build_executor, coordinator_teacher, worker_teacher
from preprocess.build_objects import embed_block_arrays
from preprocess.teachers import ClipTeacher


def _embed_block(url: str, token: str, name: str, batch_size: int, block: int) -> int:
    writer = BlockWriter.attach(url, token)
    teacher = worker_teacher(name, batch_size)
    g = writer.group
    start, stop = writer.block_range(block)
    ok = np.flatnonzero(g["status"][start:stop] == DONE)
    rgb = g["views/rgb"][start:stop][ok]
    depth = g["views/depth"][start:stop][ok] if "views/depth" in g else np.zeros(rgb.shape[:-1], np.float32)
    captions = g["captions"][start:stop][ok]
    n, v, k = stop - start, rgb.shape[1], captions.shape[1] if captions.ndim == 2 else 0
    arrays = embed_block_arrays({name: teacher}, rgb, depth, captions, ok, n, v, k)
    wanted = {s.path for s in writer.layout.arrays if s.path.startswith(f"teachers/{name}/")}
    writer.write_arrays(block, {p: a for p, a in arrays.items() if p in wanted})
    return n


def add_teacher(url: str, name: str, run: RunOptions = RunOptions()) -> str:
    """Embed the stored views and captions of ``url`` with teacher ``name`` (on the workers ``run`` says: here,
    local, SLURM or a scheduler); returns a one-line summary."""
    batch_size = run.batch_size
    teacher = coordinator_teacher(name, batch_size)  # CPU: the record and the class prompts
    with CacheWriter.open_existing(url) as writer:
        g = writer.group
        attrs = dict(g.attrs)
        if attrs["kind"] != "objects":
            raise ValueError(f"{url} is a {attrs['kind']} cache; add-teacher works on objects caches")
        if "views/rgb" not in g:
            raise ValueError(f"{url} stores no renders (built with --no-rgb); rebuild it with --rgb to add teachers")
        known = attrs.get("teachers", {})
        if name in known and attrs["build"]["state"] == "finalized":
            return f"{url} already has teacher {name!r}; nothing to do."
        roles = tuple(r for r in teacher.roles if r != "depth" or "views/depth" in g)
        record = teacher.record if roles == teacher.roles else _with_roles(teacher.record, roles)
        num_views = g["views/camera"].shape[0]
        num_captions = g["captions"].shape[1]
        specs = objects_layout(writer.layout.num_rows, 1, num_views, num_captions, {name: record},
                               num_classes=len(attrs.get("label_names", []))).arrays
        writer.add_arrays([s for s in specs if s.path.startswith(f"teachers/{name}/")],
                          {"teachers": {**known, name: record.to_dict()}})
        blocks = list(range(writer.num_blocks))
        tasks = [(url, writer.token, name, batch_size, b) for b in blocks]
        weights = [np.subtract(*writer.block_range(b)[::-1]) for b in blocks]
        with build_executor(run) as ex:
            for _ in ex.map(_embed_block, tasks, weights, desc=f"add {name}", unit="shape"):
                pass
        if isinstance(teacher, ClipTeacher):
            writer.write_fixed(f"teachers/{name}/class_text", teacher.encode_classes(list(attrs["label_names"])))
        fingerprint = writer.finalize()
    return f"added teacher {name!r} ({', '.join(roles)}) to {url}; fingerprint {fingerprint}"


def _with_roles(record, roles):
    from dataclasses import replace

    return replace(record, roles=roles)
