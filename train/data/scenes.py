"""Streaming `scenes` caches for LiDAR training: whole blocks of frames in, frames out, ragged batches.

A block of frames is read with one slice per flat array (points, labels,
pairs, pair features) and cut at the frame offsets. Blocks are sharded over
DDP ranks and DataLoader workers exactly as for objects caches
(:mod:`train.data.sharding`), so every frame is read once per epoch, in an
order fixed by (seed, epoch). :func:`collate_frames` concatenates frames of
different sizes into one batch and shifts every pair's point index by its
frame's offset, so ``pair_point`` indexes the batch's points directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cache_schema import DONE, open_cache
from cache_schema.layout import RAGGED_OFFSETS
from train.data.sharding import batches_per_slot, shard_blocks
from train.metrics import IGNORE_INDEX


@dataclass(frozen=True)
class SceneStreamConfig:
    split: str = "train"
    teacher: str | None = None  # pair features of this teacher (default: the cache's only teacher)
    seed: int = 0
    max_points: int | None = None  # keep a random subset of at most this many points per frame (and their pairs)


class SceneStream(IterableDataset):
    """An epoch of one split of a scenes cache, one frame per item."""

    def __init__(self, url: str, config: SceneStreamConfig = SceneStreamConfig(), rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        self.url, self.config, self.rank, self.world_size = url, config, rank, world_size
        cache = open_cache(url)
        if cache.kind != "scenes":
            raise ValueError(f"{url} is a {cache.kind} cache; LiDAR training reads scenes caches")
        teachers = sorted(cache.teachers)
        if config.teacher is None and len(teachers) != 1:
            raise ValueError(f"{url} has teachers {teachers}; say which one to distil")
        self.teacher = config.teacher or teachers[0]
        if self.teacher not in teachers:
            raise ValueError(f"{url} has no teacher {self.teacher!r}; it has {teachers}")
        self.teacher_dim = cache.teachers[self.teacher].dim
        self.num_rows = cache.num_rows
        self.block_rows = cache.chunking.block_rows
        self.num_blocks = cache.chunking.num_blocks(cache.num_rows)
        selected = np.zeros(cache.num_rows, bool)
        selected[cache.split(config.split)] = True
        self.selected = selected & (cache.status == DONE)
        self.has_labels = any(a.path == "labels" for a in cache.layout.arrays)
        self.frames_per_block = np.add.reduceat(self.selected, np.arange(0, cache.num_rows, self.block_rows))
        self.set_position(0)

    def set_position(self, epoch: int, batches_done: int = 0, batch_size: int = 1, num_workers: int = 0,
                     drop_last: bool = True) -> None:
        """Start (or resume) at ``batches_done`` batches into ``epoch`` for a DataLoader of this shape."""
        self.epoch, self.batches_done, self.batch_size, self.num_workers = epoch, batches_done, batch_size, num_workers
        self.drop_last = drop_last

    def restrict(self, rows: np.ndarray) -> None:
        """Stream only these frames (e.g. the labelled 1% for fine-tuning)."""
        keep = np.zeros_like(self.selected)
        keep[rows] = True
        self.selected &= keep
        self.frames_per_block = np.add.reduceat(self.selected, np.arange(0, self.num_rows, self.block_rows))

    def __len__(self) -> int:
        return int(self.selected.sum())

    def _blocks(self, worker: int) -> list[int]:
        return shard_blocks(self.num_blocks, self.world_size, self.rank, self.num_workers, worker, self.config.seed,
                            self.epoch)

    def __iter__(self):
        info = get_worker_info()
        slots = max(self.num_workers, 1)
        counts = [int(sum(self.frames_per_block[b] for b in self._blocks(w))) for w in range(slots)]
        available = [n // self.batch_size if self.drop_last else -(-n // self.batch_size) for n in counts]
        taken, next_slot = batches_per_slot(self.batches_done, available)
        worker = (next_slot + (info.id if info is not None else 0)) % slots
        skip = taken[worker] * self.batch_size
        cache = open_cache(self.url)
        offsets = {fam: cache.array(path)[:] for fam, path in RAGGED_OFFSETS.items()}
        flat = {"points": "points", "pair_point": "pairs/point", "pair_camera": "pairs/camera", "pair_uv": "pairs/uv",
                "pair_features": f"teachers/{self.teacher}/pair_features"}
        if self.has_labels:
            flat["labels"] = "labels"
        arrays = {k: cache.array(p) for k, p in flat.items()}
        for block in self._blocks(worker):
            r0, r1 = block * self.block_rows, min((block + 1) * self.block_rows, self.num_rows)
            rows = [r for r in range(r0, r1) if self.selected[r]]
            if skip >= len(rows):
                skip -= len(rows)
                continue
            data = {}
            for key, array in arrays.items():
                edges = offsets["points" if key in ("points", "labels") else "pairs"]
                data[key] = (array[int(edges[r0]):int(edges[r1])], edges[r0:r1 + 1] - edges[r0])
            order = np.random.default_rng([self.config.seed, self.epoch, block]).permutation(rows)[skip:]
            skip = 0
            for r in order:
                i = r - r0
                frame = {k: v[int(e[i]):int(e[i + 1])] for k, (v, e) in data.items()}
                if self.config.max_points and len(frame["points"]) > self.config.max_points:
                    frame = subsample(frame, self.config.max_points,
                                      np.random.default_rng([self.config.seed, self.epoch, int(r)]))
                n = len(frame["points"])
                yield {"row": int(r), "points": torch.from_numpy(frame["points"].astype(np.float32)),
                       "labels": torch.from_numpy(frame["labels"].astype(np.int64)) if self.has_labels
                       else torch.full((n,), IGNORE_INDEX, dtype=torch.int64),
                       "pair_point": torch.from_numpy(frame["pair_point"].astype(np.int64)),
                       "pair_camera": torch.from_numpy(frame["pair_camera"].astype(np.int64)),
                       "pair_uv": torch.from_numpy(frame["pair_uv"].astype(np.float32)),
                       "pair_features": torch.from_numpy(frame["pair_features"].astype(np.float32))}


def subsample(frame: dict, max_points: int, rng: np.random.Generator) -> dict:
    """A random subset of a frame's points; pairs of dropped points go, the others are re-indexed."""
    n = len(frame["points"])
    keep = np.sort(rng.choice(n, max_points, replace=False))
    new_index = np.full(n, -1, np.int64)
    new_index[keep] = np.arange(max_points)
    pair_kept = new_index[frame["pair_point"]] >= 0
    out = {k: v[pair_kept] for k, v in frame.items() if k.startswith("pair_")}
    out["pair_point"] = new_index[frame["pair_point"][pair_kept]]
    out["points"] = frame["points"][keep]
    if "labels" in frame:
        out["labels"] = frame["labels"][keep]
    return out


def collate_frames(frames: list[dict]) -> dict[str, torch.Tensor]:
    """Frames of any sizes -> one batch: points (N, 4) with ``batch_index`` (N,); pairs whose ``pair_point``
    indexes the batch's points and ``pair_frame`` says which frame each pair came from."""
    counts = torch.tensor([len(f["points"]) for f in frames])
    starts = torch.cumsum(counts, 0) - counts
    return {
        "row": torch.tensor([f["row"] for f in frames]),
        "points": torch.cat([f["points"] for f in frames]),
        "labels": torch.cat([f["labels"] for f in frames]),
        "batch_index": torch.repeat_interleave(torch.arange(len(frames)), counts),
        "pair_point": torch.cat([f["pair_point"] + s for f, s in zip(frames, starts)]),
        "pair_frame": torch.cat([torch.full((len(f["pair_point"]),), i) for i, f in enumerate(frames)]),
        "pair_camera": torch.cat([f["pair_camera"] for f in frames]),
        "pair_uv": torch.cat([f["pair_uv"] for f in frames]),
        "pair_features": torch.cat([f["pair_features"] for f in frames]),
    }


def paired_point_features(point_features: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) 3D features of the paired points and (M, D) their pairs' 2D teacher features, row by row."""
    return point_features[batch["pair_point"]], batch["pair_features"]
