"""What every evaluation of a split does first: its usable rows, and the model in eval mode for the pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from torch import nn


def split_rows(cache, split: str) -> np.ndarray:
    """The finished rows of ``split``; an error naming the cache when there are none."""
    rows = cache.done_rows(split)
    if not len(rows):
        raise ValueError(f"{cache.loc.url}: the {split!r} split has no usable shapes")
    return rows


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, back in the mode it was in afterwards (validation mid-training)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
