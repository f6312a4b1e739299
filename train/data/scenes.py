"""Streaming `scenes` caches for LiDAR training: whole blocks of frames in, frames out, ragged batches.

A block of frames is read with one slice per flat array (points, labels,
pairs, pair features) and cut at the frame offsets. Frames are sharded over
DDP ranks and DataLoader workers exactly as object rows are
(:mod:`train.data.sharding`), so every frame is read once per epoch, in an
order fixed by (seed, epoch). Workers yield whole batches:
:func:`collate_frames` concatenates frames of different sizes and shifts every
pair's point index by its frame's offset, so ``pair_point`` indexes the
batch's points directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset

from cache_schema import open_cache
from cache_schema.errors import CorruptChunkError
from train.data.prefetch import DEFAULT_BUDGET_BYTES
from train.data.sharding import ShardedStream, SlotPlan
from train.data.transport import PackedBatch
from train.eval.metrics import IGNORE_INDEX


@dataclass(frozen=True)
class SceneStreamConfig:
    split: str = "train"
    teacher: str | None = None  # pair features of this teacher (default: the cache's only teacher)
    seed: int = 0
    max_points: int | None = None  # keep a random subset of at most this many points per frame (and their pairs)
    window_rows: int = 64  # frames shuffled together (a LiDAR frame with its pairs is a megabyte or more)
    prefetch_bytes: int = DEFAULT_BUDGET_BYTES  # batches prepared ahead on a thread (0: none; see prefetch.py)


class SceneStream(ShardedStream, IterableDataset):
    """An epoch of one split of a scenes cache: collated batches of frames (see :func:`collate_frames`)."""

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
        self.selected = np.zeros(cache.num_rows, bool)
        self.selected[cache.done_rows(config.split)] = True
        self.has_labels = any(a.path == "labels" for a in cache.layout.arrays)
        self.set_position(0)

    def restrict(self, rows: np.ndarray) -> None:
        """Stream only these frames (e.g. the labelled 1% for fine-tuning)."""
        keep = np.zeros_like(self.selected)
        keep[rows] = True
        self.selected &= keep

    def _batches(self, epoch: int, plan: SlotPlan, packed: bool):
        out = PackedBatch.pack if packed else (lambda b: b)  # one buffer per batch across processes
        offsets, arrays = self.opened()
        skip, pending = plan.skip_rows, []
        for _, rows in plan.windows:
            if skip >= len(rows):
                skip -= len(rows)
                continue
            blocks = {int(b): self._read_block(arrays, offsets, int(b)) for b in np.unique(rows // self.block_rows)}
            for r in rows[skip:]:
                pending.append(self._frame(blocks[int(r) // self.block_rows], int(r), epoch))
                if len(pending) == self.batch_size:
                    yield out(collate_frames(pending))
                    pending = []
            skip = 0
        if pending and not self.drop_last:
            yield out(collate_frames(pending))

    def _open(self) -> tuple[dict, dict]:
        """The frame and pair offsets (read whole) and the flat arrays a frame is cut from."""
        cache = open_cache(self.url)
        offsets = {fam: cache.array(path)[:] for fam, path in cache.layout.offsets_paths.items()}
        flat = {"points": "points", "pair_point": "pairs/point", "pair_camera": "pairs/camera", "pair_uv": "pairs/uv",
                "pair_features": f"teachers/{self.teacher}/pair_features"}
        if self.has_labels:
            flat["labels"] = "labels"
        return offsets, {k: cache.array(p) for k, p in flat.items()}

    def _read_block(self, arrays: dict, offsets: dict, block: int) -> tuple[int, dict]:
        """One slice per flat array covering a block's frames, with the frames' offsets into it."""
        r0, r1 = block * self.block_rows, min((block + 1) * self.block_rows, self.num_rows)
        data = {}
        for key, array in arrays.items():
            edges = offsets["points" if key in ("points", "labels") else "pairs"]
            try:
                values = array[int(edges[r0]):int(edges[r1])]
            except Exception as e:  # a damaged chunk: name the store, array and frames
                raise CorruptChunkError(f"{self.url}: cannot read {array.path} of frames {r0}-{r1 - 1}: "
                                        f"{type(e).__name__}: {e}") from None
            data[key] = (values, edges[r0:r1 + 1] - edges[r0])
        return r0, data

    def _frame(self, block: tuple[int, dict], r: int, epoch: int) -> dict:
        r0, data = block
        i = r - r0
        frame = {k: v[int(e[i]):int(e[i + 1])] for k, (v, e) in data.items()}
        if self.config.max_points and len(frame["points"]) > self.config.max_points:
            frame = subsample(frame, self.config.max_points, np.random.default_rng([self.config.seed, epoch, r]))
        n = len(frame["points"])
        return {"row": r, "points": torch.from_numpy(frame["points"].astype(np.float32)),
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
