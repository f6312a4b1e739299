"""Who reads which blocks: a pure function of (blocks, world, rank, workers, worker, seed, epoch).

Blocks (whole chunks of every row array) are permuted per epoch and dealt
round-robin to the ``world_size * num_workers`` reader slots, so every block,
and so every row, is read exactly once per epoch across all ranks and workers.
Resuming needs only ``{epoch, batches_done}``: :func:`batches_per_slot`
replays the DataLoader's round-robin over its workers.
"""

from __future__ import annotations

import numpy as np


def shard_blocks(num_blocks: int, world_size: int, rank: int, num_workers: int, worker: int, seed: int,
                 epoch: int) -> list[int]:
    """Blocks this (rank, worker) slot reads in ``epoch``, in reading order."""
    order = np.random.default_rng([seed, epoch, 0xB10C]).permutation(num_blocks)
    slots = world_size * max(num_workers, 1)
    slot = rank * max(num_workers, 1) + worker
    return [int(b) for b in order[slot::slots]]


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
