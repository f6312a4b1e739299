"""Who reads which rows, in what order: a pure function of (selected rows, blocks, world, workers, seed, epoch).

    epoch order   the cache's blocks (whole chunks of every row array) in a random order per (seed, epoch),
                  each block's selected rows in row order
    ranks         contiguous, balanced ranges of that order (sizes differ by at most one row), so a rank
                  reads whole blocks but for the two at its range's ends, and caches smaller than
                  ranks x workers x block still give every rank its share
    windows       each rank's range cut into shuffle windows of ``window_rows``, but no more than a worker's
                  share of the rank's rows (so every worker has work on a small cache), rounded up to whole
                  blocks; a window's rows are permuted, so a batch is drawn from many random blocks. Windows
                  are dealt round-robin to the rank's DataLoader workers: no two workers read the same chunks
    batches       a worker cuts its rows, window after window, into batches (a batch may span two windows);
                  every rank takes the same number of batches per epoch: the smallest any rank has

So every selected row is yielded exactly once per epoch (``drop_last=False``)
for any world size and worker count; with ``drop_last`` at most a batch per
worker of each rank is left out, different rows each epoch. Resuming needs only
``{epoch, batches_done}``: :func:`batches_per_slot` replays the DataLoader's
round-robin over its workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from torch.utils.data import get_worker_info

from train.data.prefetch import BatchReader, batch_bytes

DEFAULT_WINDOW_ROWS = 4096


@dataclass(frozen=True)
class Sharding:
    """The shape of the readers: DDP ranks, DataLoader workers per rank, batch size."""

    world_size: int = 1
    rank: int = 0
    num_workers: int = 0
    batch_size: int = 1
    drop_last: bool = True
    window_rows: int = DEFAULT_WINDOW_ROWS

    @property
    def slots(self) -> int:
        return max(self.num_workers, 1)


def epoch_order(selected: np.ndarray, block_rows: int, seed: int, epoch: int) -> np.ndarray:
    """Every selected row once: blocks in a random order per (seed, epoch), rows within a block in order."""
    num_blocks = -(-len(selected) // block_rows)
    order = np.random.default_rng([seed, epoch, 0xB10C]).permutation(num_blocks)
    rows = [np.flatnonzero(selected[b * block_rows:(b + 1) * block_rows]) + b * block_rows for b in order]
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def rank_rows(order: np.ndarray, world_size: int, rank: int) -> np.ndarray:
    """This rank's contiguous share of the epoch order (balanced to one row)."""
    return np.array_split(order, world_size)[rank]


def window_size(block_rows: int, window_rows: int, rank_rows: int, workers: int) -> int:
    """Rows per shuffle window: ``window_rows``, but no more than a worker's share of the rank's rows,
    rounded up to whole blocks."""
    rows = min(window_rows, max(1, -(-rank_rows // workers)))
    return block_rows * max(1, -(-rows // block_rows))


def worker_windows(rows: np.ndarray, size: int, workers: int, worker: int, seed: int, epoch: int,
                   rank: int) -> list[tuple[int, np.ndarray]]:
    """(window index, its rows in yield order) for one worker: windows dealt round-robin, rows permuted."""
    out = []
    for w in range(worker, -(-len(rows) // size), workers):
        window = rows[w * size:(w + 1) * size]
        out.append((w, window[np.random.default_rng([seed, epoch, rank, w, 0x5EED]).permutation(len(window))]))
    return out


def worker_row_counts(num_rows: int, size: int, workers: int) -> list[int]:
    """Rows each worker yields from a rank's ``num_rows`` (windows of ``size`` dealt round-robin)."""
    counts = [0] * workers
    for w in range(-(-num_rows // size)):
        counts[w % workers] += min(size, num_rows - w * size)
    return counts


def batches_available(counts: list[int], batch_size: int, drop_last: bool) -> list[int]:
    return [n // batch_size if drop_last else -(-n // batch_size) for n in counts]


def batches_per_epoch(num_selected: int, block_rows: int, s: Sharding) -> int:
    """Batches every rank takes per epoch: the fewest any rank has, so ranks step through epochs together."""
    shares = [len(part) for part in np.array_split(np.zeros(num_selected), s.world_size)]
    return min(sum(batches_available(worker_row_counts(n, window_size(block_rows, s.window_rows, n, s.slots),
                                                       s.slots), s.batch_size, s.drop_last)) for n in shares)


def batches_per_slot(batches_done: int, batches_available: list[int]) -> tuple[list[int], int]:
    """Batches each DataLoader worker has delivered after ``batches_done``, and whose turn is next.

    The DataLoader takes batch i from worker i % W while all are alive, skipping
    workers that ran out (``batches_available`` per worker). A resumed loader
    starts asking at worker 0, so its worker j must play slot ``(next + j) % W``.
    """
    taken = [0] * len(batches_available)
    w, left = 0, batches_done
    while left > 0:
        if all(t >= a for t, a in zip(taken, batches_available)):
            break
        if taken[w] < batches_available[w]:
            taken[w] += 1
            left -= 1
        w = (w + 1) % len(batches_available)
    return taken, w


@dataclass(frozen=True)
class SlotPlan:
    """What one (rank, worker) yields in an epoch: its windows, and how many rows to skip on resume."""

    windows: list[tuple[int, np.ndarray]]
    skip_rows: int
    max_batches: int  # this worker's batches in the epoch (before the epoch's common cut)


def slot_plan(selected: np.ndarray, block_rows: int, s: Sharding, worker_id: int, seed: int, epoch: int,
              batches_done: int, order: np.ndarray | None = None) -> SlotPlan:
    """The plan of the DataLoader worker ``worker_id`` (0 in-process) resuming ``batches_done`` into ``epoch``.

    ``order``: the epoch's rows in reading order, when the stream orders them itself (default: blocks in a
    random order, :func:`epoch_order`)."""
    order = epoch_order(selected, block_rows, seed, epoch) if order is None else order
    mine = rank_rows(order, s.world_size, s.rank)
    size = window_size(block_rows, s.window_rows, len(mine), s.slots)
    available = batches_available(worker_row_counts(len(mine), size, s.slots), s.batch_size, s.drop_last)
    taken, next_slot = batches_per_slot(batches_done, available)
    worker = (next_slot + worker_id) % s.slots
    return SlotPlan(worker_windows(mine, size, s.slots, worker, seed, epoch, s.rank),
                    taken[worker] * s.batch_size, available[worker] - taken[worker])


class ShardedStream:
    """What the objects and scenes streams share: the position in the epochs and the per-epoch batch count.

    A subclass sets ``selected`` (bool per row), ``block_rows``, ``rank``, ``world_size``,
    ``config.window_rows`` and ``config.prefetch_bytes``, and yields a slot plan's batches in
    :meth:`_batches`. A :class:`~train.data.prefetch.BatchReader` thread prepares them ahead of the consumer,
    and into the next epoch when :meth:`set_position` was told ``continuous`` (training).
    """

    def __iter__(self):
        info = get_worker_info()
        epoch, batches_done = self.position
        self.position = (epoch + 1, 0)  # persistent workers keep their copy: the next iter() is the next epoch
        packed = info is not None  # in a DataLoader worker a batch crosses as one buffer (transport.py)
        if self.config.prefetch_bytes <= 0:
            yield from self._batches(epoch, self._plan(info, epoch, batches_done), packed)
            return
        yield from self._reader(info, epoch, batches_done, packed).epoch(epoch)

    def _reader(self, info, epoch: int, batches_done: int, packed: bool) -> BatchReader:
        """This process's reader if it is where the consumer is, else a new one starting there."""
        key = (os.getpid(), info.num_workers if info else 0, info.id if info else 0, self.batch_size,
               self.drop_last)
        kept = getattr(self, "_batch_reader", None)
        reusable = self.continuous and kept is not None and kept[0] == key and batches_done == 0
        if reusable and kept[1].next_epoch == epoch:
            return kept[1]
        if kept is not None and kept[0][0] == key[0]:  # a forked worker drops its parent's without touching it
            kept[1].close()
        reader = BatchReader(lambda e, done: self._batches(e, self._plan(info, e, done), packed), epoch,
                             batches_done, self.config.prefetch_bytes, batch_bytes, self.continuous)
        self._batch_reader = (key, reader)
        return reader

    def close(self) -> None:
        """Stop reading ahead (the end of a run; a stream is closed when collected anyway)."""
        kept = getattr(self, "_batch_reader", None)
        if kept is not None and kept[0][0] == os.getpid():
            kept[1].close()
        self._batch_reader = None

    def _batches(self, epoch: int, plan: SlotPlan, packed: bool):
        """This slot's batches of ``epoch``; ``packed``: as :class:`~train.data.transport.PackedBatch`."""
        raise NotImplementedError

    def opened(self):
        """What :meth:`_open` returns (the cache's arrays), opened once per process and kept across epochs: a
        finished cache does not change, and reopening costs metadata reads that dominate one-batch epochs."""
        pid = os.getpid()  # a forked worker opens its own, not the parent's
        if getattr(self, "_opened", (None, None))[0] != pid:
            self._opened = (pid, self._open())
        return self._opened[1]

    def _open(self):
        raise NotImplementedError

    def __getstate__(self) -> dict:  # each worker opens its own arrays and runs its own reader
        return {k: v for k, v in self.__dict__.items() if k not in ("_opened", "_batch_reader")}

    def set_position(self, epoch: int, batches_done: int = 0, batch_size: int = 1, drop_last: bool = True,
                     num_workers: int = 0, continuous: bool = False) -> None:
        """Start (or resume) at ``batches_done`` batches into ``epoch``; each later ``iter()`` is the next epoch.

        ``num_workers`` is the DataLoader's (for :meth:`batches_per_epoch`); inside a worker the stream asks
        ``get_worker_info()``, so a stream never yields a row twice whatever it is told. ``continuous``: the
        consumer goes on epoch after epoch (training), so the next epoch is read while this one ends.
        """
        self.position = (epoch, batches_done)
        self.batch_size, self.drop_last, self.num_workers = batch_size, drop_last, num_workers
        self.continuous = continuous

    def __len__(self) -> int:
        return int(self.selected.sum())

    def sharding(self, num_workers: int) -> Sharding:
        return Sharding(self.world_size, self.rank, num_workers, self.batch_size, self.drop_last,
                        self.config.window_rows)

    def batches_per_epoch(self) -> int:
        """Batches every rank takes per epoch with the DataLoader given to :meth:`set_position`."""
        return batches_per_epoch(len(self), self.block_rows, self.sharding(self.num_workers))

    def _plan(self, info, epoch: int, batches_done: int) -> SlotPlan:
        """The plan of this worker (``info``: ``get_worker_info()``) resuming ``batches_done`` into ``epoch``."""
        workers, worker_id = (info.num_workers, info.id) if info is not None else (0, 0)
        return slot_plan(self.selected, self.block_rows, self.sharding(workers), worker_id, self.config.seed,
                         epoch, batches_done)
