"""A batch crosses the DataLoader's process boundary as one shared-memory buffer.

Sent as a dict, every tensor of a batch gets its own shared-memory segment
(a file, an mmap and a file descriptor passed over a socket): on a CPU that
costs about as much as producing one of this project's batches. A worker
therefore yields a :class:`PackedBatch`: the arrays' bytes in one uint8
tensor and a small header. It is a read-only mapping whose items are views
into the buffer, so the main process reads it without copying.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import torch

ALIGN = 64  # bytes: every array starts aligned, so a view of any dtype is legal


class PackedBatch(Mapping):
    """Arrays of one batch in one buffer; ``batch[name]`` is a tensor view into it."""

    def __init__(self, buffer: torch.Tensor, fields: tuple[tuple[str, str, tuple[int, ...], int], ...]) -> None:
        self.buffer, self.fields = buffer, fields

    @classmethod
    def pack(cls, arrays: Mapping[str, np.ndarray | torch.Tensor]) -> PackedBatch:
        parts = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in arrays.items()}
        fields, offset = [], 0
        for name, a in parts.items():
            fields.append((name, a.dtype.str, a.shape, offset))
            offset += -(-a.nbytes // ALIGN) * ALIGN
        buffer = np.empty(offset, np.uint8)
        for (name, _, _, start), a in zip(fields, parts.values()):
            buffer[start:start + a.nbytes] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        return cls(torch.from_numpy(buffer), tuple(fields))

    def __getitem__(self, name: str) -> torch.Tensor:
        for key, dtype, shape, start in self.fields:
            if key == name:
                dt = np.dtype(dtype)
                nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
                return torch.from_numpy(self.buffer.numpy()[start:start + nbytes].view(dt).reshape(shape))
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key for key, *_ in self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def pin_memory(self) -> PackedBatch:  # the DataLoader's pin_memory thread calls this on CUDA machines
        return PackedBatch(self.buffer.pin_memory(), self.fields)

    def __reduce__(self):
        return PackedBatch, (self.buffer, self.fields)


def keep_packed(batch):
    """The DataLoader's ``collate_fn`` for streams that yield whole batches: leave a packed batch packed."""
    return batch


def unpack(batch: Mapping) -> dict[str, torch.Tensor]:
    """A plain dict of tensors (views into a packed batch's buffer)."""
    return {k: batch[k] for k in batch}
