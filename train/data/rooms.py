"""Indoor rooms as the S3DIS protocol reads them: random 1 m columns for training, sliding columns for testing.

Training (ACT's ``semantic_segmentation/dataset.py``, after PointNet++'s S3DIS loader): an epoch holds
``round(n_r / N x sample_rate)`` blocks of room ``r`` (n_r its points, N the points per block), so every part of
the area is seen in proportion to its points. A block is the 1 m x 1 m column (full height) around a random point
of the room, redrawn until it holds more than ``min_points`` points; N of its points are drawn (with replacement
only when it has fewer). Its input is ``x - cx, y - cy, z`` with z the height above the room's lowest point (the
room's minimum is subtracted, as the reference preprocessing stores it), then scaled by U(0.8, 1.25) and shifted
by U(-0.1, 0.1) per axis.

Who draws which blocks is :mod:`train.data.sharding`'s plan over the epoch's *slots* (one per block): rooms in a
random order per (seed, epoch), each room's slots together, so a shuffle window of slots reads only the rooms it
draws from: a batch mixes the ~9 rooms of a 4,096-block window on S3DIS (ACT shuffles the whole area). Memory is
a window of blocks' rooms (about ``window_rows x N`` points, plus the rooms cut at its two
ends), never the area; every slot is drawn once per epoch whatever the ranks and workers; a slot's block and
augmentation are seeded by (seed, epoch, slot), so they do not depend on who draws it.

Testing (ACT's ``main_test.py``): :func:`sliding_blocks` covers the room with 1 m columns at a 0.5 m stride (the
last one clamped to the room's edge, 1 mm of padding), each padded by repeats of its own points to a multiple of
N and cut into blocks of N, so every point of the room is predicted at least once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset

from cache_schema import open_cache
from cache_schema.errors import CorruptChunkError
from train.data.sharding import ShardedStream, SlotPlan, slot_plan
from train.data.transport import PackedBatch

BLOCK_SIZE = 1.0
MAX_TRIES = 100  # ACT redraws without end; a room too sparse for any block gets its fullest one of 100 draws


@dataclass(frozen=True)
class RoomStreamConfig:
    split: str = "train"
    num_points: int = 2048       # points per block
    block_size: float = BLOCK_SIZE
    min_points: int | None = None  # a block needs more points than this [None: num_points // 2, ACT's 1024]
    sample_rate: float = 1.0     # blocks per epoch as a share of (points of the split / num_points)
    augment: bool = True         # scale U(0.8, 1.25), shift U(-0.1, 0.1) per axis
    seed: int = 0
    window_rows: int = 4096      # blocks shuffled together: ~9 S3DIS rooms' worth, so a batch mixes rooms
    prefetch_bytes: int = 64 * 2**20

    @property
    def min_block_points(self) -> int:
        return self.num_points // 2 if self.min_points is None else self.min_points


def blocks_per_room(room_sizes: np.ndarray, num_points: int, sample_rate: float = 1.0) -> np.ndarray:
    """(R,) blocks per epoch of each room: ``round(n_r / sum(n) x int(sum(n) x rate / N))`` (ACT's ``room_idxs``)."""
    sizes = np.asarray(room_sizes, np.float64)
    total = sizes.sum()
    if total == 0:
        return np.zeros(len(sizes), np.int64)
    num_iter = int(total * sample_rate / num_points)
    return np.round(sizes / total * num_iter).astype(np.int64)


def epoch_slots(counts: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """(S,) the room of every slot of an epoch: rooms in a random order per (seed, epoch), each repeated by its
    count, so a room's slots are together."""
    order = np.random.default_rng([seed, epoch, 0x2004]).permutation(len(counts))
    return np.repeat(order, counts[order])


def sample_block(xyz: np.ndarray, rng: np.random.Generator, num_points: int, block_size: float = BLOCK_SIZE,
                 min_points: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Indices (num_points,) of a random block of the room ``xyz`` (n, 3) and its centre (3,): the column of
    ``block_size`` around a random point, redrawn until it holds more than ``min_points`` points."""
    half = block_size / 2
    best, best_center = None, None
    for _ in range(MAX_TRIES):
        center = xyz[rng.integers(len(xyz))]
        idx = np.flatnonzero((np.abs(xyz[:, 0] - center[0]) <= half) & (np.abs(xyz[:, 1] - center[1]) <= half))
        if best is None or len(idx) > len(best):
            best, best_center = idx, center
        if len(idx) > min_points:
            break
    return rng.choice(best, num_points, replace=len(best) < num_points), best_center


def block_input(xyz: np.ndarray, center_xy: np.ndarray) -> np.ndarray:
    """The model's input for points of a block: x and y relative to the block's centre, z as it is."""
    out = xyz.astype(np.float32, copy=True)
    out[..., :2] -= np.asarray(center_xy, np.float32)[:2]
    return out


def scale_shift(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PointNet++'s ``random_scale_point_cloud`` (0.8-1.25, one per block) and ``shift_point_cloud`` (+-0.1)."""
    return points * np.float32(rng.uniform(0.8, 1.25)) + rng.uniform(-0.1, 0.1, 3).astype(np.float32)


def sliding_blocks(xyz: np.ndarray, num_points: int, rng: np.random.Generator, block_size: float = BLOCK_SIZE,
                   stride: float = 0.5, padding: float = 0.001) -> list[tuple[np.ndarray, np.ndarray]]:
    """The test blocks of a whole room (``xyz`` with its minimum at 0): (indices (k N,), centre (2,)) per
    non-empty column; indices are the column's points in a random order, padded by random repeats of them to a
    multiple of N. Every point of the room is in at least one block."""
    top = xyz[:, :2].max(axis=0)
    grid = [max(1, int(np.ceil((t - block_size) / stride)) + 1) for t in top]
    order = np.argsort(xyz[:, 0], kind="stable")  # columns select by a range of x first: a binary search
    xs = xyz[order, 0]
    out = []
    for iy in range(grid[1]):
        for ix in range(grid[0]):
            start = np.array([ix * stride, iy * stride])
            end = np.minimum(start + block_size, top)
            start = end - block_size
            lo, hi = np.searchsorted(xs, start[0] - padding), np.searchsorted(xs, end[0] + padding, side="right")
            cand = order[lo:hi]
            y = xyz[cand, 1]
            idx = cand[(y >= start[1] - padding) & (y <= end[1] + padding)]
            if not len(idx):
                continue
            extra = -len(idx) % num_points
            if extra:
                idx = np.concatenate([idx, rng.choice(idx, extra, replace=extra > len(idx))])
            out.append((rng.permutation(idx), start + block_size / 2))
    return out


class RoomBlockStream(ShardedStream, IterableDataset):
    """An epoch of training blocks of one split of a rooms cache: batches of ``points`` (B, N, 3) float32,
    ``labels`` (B, N) int64 (255 = unlabelled) and ``row`` (B,) the room of each block."""

    def __init__(self, url: str, config: RoomStreamConfig = RoomStreamConfig(), rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        self.url, self.config, self.rank, self.world_size = url, config, rank, world_size
        cache = self.open_checked(url)
        rooms = cache.done_rows(config.split)
        if not len(rooms):
            raise ValueError(f"{url}: split {config.split!r} has no built rooms")
        self.counts = np.zeros(cache.num_rows, np.int64)
        self.counts[rooms] = self.slots_per_room(cache, rooms)
        self.selected = np.ones(int(self.counts.sum()), bool)  # one per slot: the sharding plan's rows
        self.block_rows = 1
        self.set_position(0)

    @staticmethod
    def open_checked(url: str):
        cache = open_cache(url)
        if cache.kind != "rooms":
            raise ValueError(f"{url} is a {cache.kind} cache; semantic segmentation reads rooms caches "
                             "(`preprocess rooms`)")
        return cache

    def slots_per_room(self, cache, rooms: np.ndarray) -> np.ndarray:
        """(len(rooms),) slots of each built room of the split in an epoch: ACT's blocks per room."""
        c = self.config
        counts = blocks_per_room(cache.room_sizes()[rooms], c.num_points, c.sample_rate)
        if not counts.sum():
            raise ValueError(f"{self.url}: split {c.split!r} holds fewer than {c.num_points} points")
        return counts

    def _plan(self, info, epoch: int, batches_done: int) -> SlotPlan:
        workers, worker_id = (info.num_workers, info.id) if info is not None else (0, 0)
        return slot_plan(self.selected, 1, self.sharding(workers), worker_id, self.config.seed, epoch, batches_done,
                         order=np.arange(len(self.selected)))

    def _open(self) -> dict:
        cache = open_cache(self.url)
        return {"offsets": cache.offsets("points"), "points": cache.array("points"), "labels": cache.array("labels")}

    def read_room(self, arrays: dict, room: int) -> tuple[np.ndarray, np.ndarray]:
        """A room's points with its minimum at 0 (float32) and labels; one slice of each flat array."""
        lo, hi = int(arrays["offsets"][room]), int(arrays["offsets"][room + 1])
        try:
            xyz, labels = arrays["points"][lo:hi], arrays["labels"][lo:hi]
        except Exception as e:  # a damaged chunk: name the store, array and room
            raise CorruptChunkError(f"{self.url}: cannot read room {room}: {type(e).__name__}: {e}") from None
        return (xyz - xyz.min(axis=0)).astype(np.float32), labels

    def _batches(self, epoch: int, plan: SlotPlan, packed: bool):
        out = PackedBatch.pack if packed else (lambda b: b)
        arrays = self.opened()
        slot_room = epoch_slots(self.counts, self.config.seed, epoch)
        skip, pending = plan.skip_rows, []
        for _, slots in plan.windows:
            if skip >= len(slots):
                skip -= len(slots)
                continue
            rooms = {int(r): self.read_room(arrays, int(r)) for r in np.unique(slot_room[slots[skip:]])}
            for slot in slots[skip:]:
                pending.append(self.block(rooms[int(slot_room[slot])], int(slot_room[slot]), int(slot), epoch))
                if len(pending) == self.batch_size:
                    yield out(self.collate(pending))
                    pending = []
            skip = 0
        if pending and not self.drop_last:
            yield out(self.collate(pending))

    def collate(self, blocks: list[dict]) -> dict:
        return collate_blocks(blocks)

    def block(self, room: tuple[np.ndarray, np.ndarray], room_index: int, slot: int, epoch: int) -> dict:
        xyz, labels = room
        c = self.config
        rng = np.random.default_rng([c.seed, epoch, slot, 0xB10C])
        idx, center = sample_block(xyz, rng, c.num_points, c.block_size, c.min_block_points)
        points = block_input(xyz[idx], center)
        if c.augment:
            points = scale_shift(points, rng)
        return {"points": points, "labels": labels[idx].astype(np.int64), "row": room_index}


def collate_blocks(blocks: list[dict]) -> dict[str, torch.Tensor]:
    return {"points": torch.from_numpy(np.stack([b["points"] for b in blocks])),
            "labels": torch.from_numpy(np.stack([b["labels"] for b in blocks])),
            "row": torch.tensor([b["row"] for b in blocks])}


def class_weights(url: str, split: str, num_classes: int) -> np.ndarray:
    """(C,) float32 loss weights ``(max p / p) ** (1/3)`` of the split's class frequencies p (ACT's
    ``labelweights``); 0 for a class the split never shows. Read a room at a time."""
    cache = open_cache(url)
    counts = np.zeros(num_classes, np.int64)
    for room in cache.done_rows(split):
        labels = cache.ragged("labels", int(room))
        counts += np.bincount(labels[labels < num_classes], minlength=num_classes)
    p = counts / max(counts.sum(), 1)
    with np.errstate(divide="ignore"):
        w = np.where(p > 0, (p.max() / np.where(p > 0, p, 1)) ** (1 / 3), 0.0)
    return w.astype(np.float32)
