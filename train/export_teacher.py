"""Export a stage-1 model's token and global features into an objects cache, once, for stage-2 to stream.

The input of every shape is its first N stored points (no augmentation), the
same input ``StreamConfig(sampling="first", augment=False)`` gives stage-2, so
the exported tokens are exactly what the frozen model would compute on the fly.
The teacher is added as ``teachers/stage1-<hash of the encoder weights>/``
with roles ``tokens`` (N, G, C) and ``global`` (N, 2C); the cache is marked as
building while this runs and gets a new fingerprint at the end. Only the
``train`` extra is needed.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from cache_schema import DONE, CacheWriter, TeacherRecord, objects_layout, open_cache
from train.stages.stage2 import load_stage1, stage1_fingerprint


@torch.inference_mode()
def export_teacher(ckpt: str, url: str, num_points: int = 1024, batch_size: int = 64, progress: bool = True) -> str:
    """Add the stage-1 model ``ckpt``'s features to the cache at ``url``; returns a one-line summary."""
    state, model = load_stage1(ckpt)
    encoder = model.encoder.eval()
    name = f"stage1-{stage1_fingerprint(state)}"
    cache = open_cache(url)
    if cache.kind != "objects":
        raise ValueError(f"{url} is a {cache.kind} cache; export-teacher works on objects caches")
    if name in cache.teachers:
        return f"{url} already has teacher {name!r}; nothing to do."
    c, g, d = encoder.token_dim, encoder.num_tokens, encoder.global_dim
    record = TeacherRecord(name, "teacher-cache", f"{encoder.family} stage-1", "none", "sha256:" + name[7:], c,
                           ("tokens", "global"), normalized=False, pretrained=False,
                           extra={"num_tokens": g, "global_dim": d, "num_points": num_points, "ckpt": ckpt,
                                  "input": f"first {num_points} stored points, no augmentation"})
    specs = objects_layout(cache.num_rows, 1, 1, 1, {name: record}).arrays
    status, points = cache.status, cache.array("points")
    with CacheWriter.open_existing(url) as writer:
        writer.add_arrays([s for s in specs if s.path.startswith(f"teachers/{name}/")],
                          {"teachers": {**{n: t.to_dict() for n, t in cache.teachers.items()}, name: record.to_dict()}})
        for block in tqdm(range(writer.num_blocks), desc=f"export {name}", unit="block", disable=not progress):
            start, stop = writer.block_range(block)
            tokens = np.zeros((stop - start, g, c), np.float32)
            glob = np.zeros((stop - start, d), np.float32)
            ok = np.flatnonzero(status[start:stop] == DONE)
            block_points = points[start:stop, :num_points]                 # one read per block
            for s in range(0, len(ok), batch_size):
                rows = ok[s:s + batch_size]
                t, gl = encoder(torch.from_numpy(block_points[rows].astype(np.float32)))
                tokens[rows], glob[rows] = t.numpy(), gl.numpy()
            writer.write_arrays(block, {f"teachers/{name}/tokens": tokens, f"teachers/{name}/global": glob})
        fingerprint = writer.finalize()
    return f"exported {name} (tokens {g}x{c}, global {d}) of {ckpt} into {url}; fingerprint {fingerprint}"
