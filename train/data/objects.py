"""Streaming `objects` caches for training: whole blocks in, shuffled samples out.

Each sample: ``points`` (N, 3) subsampled from the cached P points (random or
FPS) and augmented; ``label``; ``row``; and one target per contrastive term:
``<teacher>/text`` (a random caption's embedding), ``<teacher>/image`` (a
random view's embedding, or its depth map's for teachers that have depth).
All per-sample randomness is seeded by (seed, epoch, row), so a resumed
stream yields exactly what the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cache_schema import DONE, open_cache
from train.data.augment import augment
from train.data.sharding import batches_per_slot, shard_blocks


@dataclass(frozen=True)
class StreamConfig:
    split: str = "train"
    num_points: int = 1024
    sampling: str = "random"  # or "fps"
    augment: bool = True
    seed: int = 0
    shuffle_blocks: int = 4  # blocks mixed together before samples are drawn


def contrastive_terms(cache) -> dict[str, tuple[str, str]]:
    """term -> (teacher, role): text for teachers with captions, image for every vision teacher."""
    terms = {}
    for name, t in sorted(cache.teachers.items()):
        if "text" in t.roles:
            terms[f"{name}/text"] = (name, "text")
        if "image" in t.roles:
            terms[f"{name}/image"] = (name, "image")
    return terms


class ObjectStream(IterableDataset):
    """An epoch of one split of an objects cache, sharded over DDP ranks and DataLoader workers."""

    def __init__(self, url: str, config: StreamConfig = StreamConfig(), rank: int = 0, world_size: int = 1,
                 storage_options: dict | None = None) -> None:
        super().__init__()
        self.url, self.config, self.rank, self.world_size = url, config, rank, world_size
        self.storage_options = storage_options
        cache = open_cache(url, storage_options)
        if cache.kind != "objects":
            raise ValueError(f"{url} is a {cache.kind} cache; stage-1 trains on objects caches")
        self.terms = contrastive_terms(cache)
        self.teacher_dims = {name: t.dim for name, t in cache.teachers.items()}
        rows = np.zeros(cache.num_rows, bool)
        rows[cache.split(config.split)] = True
        rows &= cache.status == DONE
        self.block_rows = cache.chunking.block_rows
        self.num_blocks = cache.chunking.num_blocks(cache.num_rows)
        self.rows_per_block = np.add.reduceat(rows, np.arange(0, cache.num_rows, self.block_rows))
        self.selected = rows
        self.set_position(0)

    def set_position(self, epoch: int, batches_done: int = 0, batch_size: int = 1, num_workers: int = 0,
                     drop_last: bool = True) -> None:
        """Start (or resume) at ``batches_done`` batches into ``epoch`` for a DataLoader of this shape."""
        self.epoch, self.batches_done, self.batch_size, self.num_workers = epoch, batches_done, batch_size, num_workers
        self.drop_last = drop_last

    def __len__(self) -> int:
        return int(self.selected.sum())

    def slot_samples(self, epoch: int) -> list[int]:
        """Samples each DataLoader worker of this rank yields in ``epoch``."""
        w = max(self.num_workers, 1)
        return [int(sum(self.rows_per_block[b] for b in shard_blocks(
            self.num_blocks, self.world_size, self.rank, self.num_workers, i, self.config.seed, epoch)))
            for i in range(w)]

    def __iter__(self):
        info = get_worker_info()
        per_batch = self.batch_size
        available = [n // per_batch if self.drop_last else -(-n // per_batch) for n in self.slot_samples(self.epoch)]
        taken, next_slot = batches_per_slot(self.batches_done, available)
        worker = (next_slot + (info.id if info is not None else 0)) % len(available)
        skip = taken[worker] * self.batch_size
        blocks = shard_blocks(self.num_blocks, self.world_size, self.rank, self.num_workers, worker,
                              self.config.seed, self.epoch)
        cache = open_cache(self.url, self.storage_options)
        group = self.config.shuffle_blocks
        for g in range(0, len(blocks), group):
            rows = np.concatenate([np.flatnonzero(self.selected[b * self.block_rows:(b + 1) * self.block_rows])
                                   + b * self.block_rows for b in blocks[g:g + group]])
            if skip >= len(rows):
                skip -= len(rows)
                continue
            data = self._read(cache, blocks[g:g + group])
            order = np.random.default_rng([self.config.seed, self.epoch, worker, self.rank, g]).permutation(len(rows))
            for i in order[skip:]:
                yield self._sample(data, rows[i])
            skip = 0

    def _read(self, cache, blocks: list[int]) -> dict[str, Any]:
        """Whole blocks (so whole chunks) of every array a sample needs, in block order."""
        ranges = [(b * self.block_rows, min((b + 1) * self.block_rows, cache.num_rows)) for b in blocks]
        idx = np.concatenate([np.arange(r0, r1) for r0, r1 in ranges])
        paths = {"points": "points", "label": "label"}
        for name, role in {(n, r) for n, r in self.terms.values()}:
            paths[f"{name}/{role}"] = f"teachers/{name}/{role}"
            if role == "image" and "depth" in cache.teachers[name].roles:
                paths[f"{name}/depth"] = f"teachers/{name}/depth"
        arrays = {}
        for key, path in paths.items():
            array = cache.array(path)
            arrays[key] = np.concatenate([array[r0:r1] for r0, r1 in ranges])
        return {"position": {int(r): i for i, r in enumerate(idx)}, "arrays": arrays}

    def _sample(self, data: dict[str, Any], row: int) -> dict[str, Any]:
        i = data["position"][int(row)]
        d = {k: v[i] for k, v in data["arrays"].items()}
        rng = np.random.default_rng([self.config.seed, self.epoch, int(row)])
        pts = d["points"]
        if self.config.sampling == "fps":
            from train.ops import farthest_point_sample

            idx = farthest_point_sample(torch.from_numpy(pts.astype(np.float32))[None], self.config.num_points)[0]
            idx = idx.numpy()
        else:
            idx = rng.choice(len(pts), self.config.num_points, replace=len(pts) < self.config.num_points)
        pts = pts[idx].astype(np.float32)
        if self.config.augment:
            pts = augment(pts, rng)
        sample = {"points": torch.from_numpy(pts), "label": int(d["label"]), "row": int(row)}
        view = None
        for term, (name, role) in self.terms.items():
            values = d[f"{name}/{role}"]
            if role == "text":
                sample[term] = torch.from_numpy(values[rng.integers(len(values))].astype(np.float32))
                continue
            view = rng.integers(values.shape[0]) if view is None else view  # one view for all vision teachers
            if f"{name}/depth" in d and rng.random() < 0.5:
                values = d[f"{name}/depth"]
            sample[term] = torch.from_numpy(values[view].astype(np.float32))
        return sample
