"""Prepare batches on a thread, ahead of the consumer and across epoch ends.

A stream reads a whole shuffle window (many blocks) before its first batch.
A reader that only works when asked therefore stalls: in a DataLoader worker
it idles while the main process drains its batches, then the step waits while
it reads the next window (and the DataLoader takes batches round-robin, so one
worker reading holds up the step even when the others are ready); in the main
process (``--workers 0``) reading never overlaps the training step. At the
users' scale this is every epoch start: 8 ranks x 8 workers on 52k shapes give
each worker about one window per epoch.

:class:`BatchReader` keeps batches ready on a thread, up to a byte budget:
reading, zarr's decoding and numpy's copies release the GIL. When it is told
the consumer goes on epoch after epoch (training), it starts the next epoch as
soon as this one's last batch is prepared. The batches and their order are
exactly the stream's, so exact resume is untouched: a batch is labelled with
its epoch, and the consumer drops what an epoch cut short left behind.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

DEFAULT_BUDGET_BYTES = 64 << 20  # per stream process: 8 ranks x 8 workers hold 4 GiB at most
_END = object()  # an epoch's last item


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class BatchReader:
    """Batches of ``epoch_batches(epoch, batches_done)`` prepared on a daemon thread, ``budget_bytes`` ahead.

    It starts at ``(epoch, batches_done)``; with ``continuous`` it goes on with
    the next epochs from their start, else it stops after that one. At least
    one item is always ready ahead, whatever its size. An exception of the
    producer is raised in the consumer at its place in the sequence.
    """

    def __init__(self, epoch_batches: Callable[[int, int], Iterable], epoch: int, batches_done: int,
                 budget_bytes: int, size_of: Callable[[Any], int], continuous: bool) -> None:
        self.budget_bytes, self.size_of = budget_bytes, size_of
        self.next_epoch = epoch  # the epoch the consumer may ask for next
        self.ready: deque = deque()
        self.held = 0
        self.cond = threading.Condition()
        self.stopped = False
        self.finished = False
        self.thread = threading.Thread(target=self._produce, args=(epoch_batches, epoch, batches_done, continuous),
                                       name="batch-reader", daemon=True)
        self.thread.start()

    def _put(self, epoch: int, item, nbytes: int) -> bool:
        with self.cond:
            while self.ready and self.held + nbytes > self.budget_bytes and not self.stopped:
                self.cond.wait()
            if self.stopped:
                return False
            self.ready.append((epoch, item, nbytes))
            self.held += nbytes
            self.cond.notify_all()
            return True

    def _produce(self, epoch_batches, epoch: int, batches_done: int, continuous: bool) -> None:
        try:
            while True:
                for item in epoch_batches(epoch, batches_done):
                    if not self._put(epoch, item, self.size_of(item)):
                        return
                if not self._put(epoch, _END, 0) or not continuous:
                    return
                epoch, batches_done = epoch + 1, 0
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(epoch, _Raised(e), 0)
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    def epoch(self, epoch: int) -> Iterator:
        """The batches of ``epoch`` (which must be :attr:`next_epoch`); leftovers of earlier epochs dropped."""
        if epoch != self.next_epoch:
            raise ValueError(f"this reader is at epoch {self.next_epoch}, not {epoch}")
        self.next_epoch = epoch + 1
        while True:
            with self.cond:
                while not self.ready and not self.finished:
                    self.cond.wait()
                if not self.ready:
                    return
                label, item, nbytes = self.ready.popleft()
                self.held -= nbytes
                self.cond.notify_all()
            if isinstance(item, _Raised):
                raise item.error
            if label < epoch:
                continue  # the consumer cut that epoch short (the loop's common batch count)
            if item is _END:
                return
            yield item

    def close(self) -> None:
        """Stop the producer (at its next item) and let its thread end."""
        with self.cond:
            self.stopped = True
            self.ready.clear()
            self.held = 0
            self.cond.notify_all()
        self.thread.join(timeout=10)


def batch_bytes(batch) -> int:
    """Bytes of a batch: a packed one's buffer, or the sum of a dict's tensors and arrays."""
    if hasattr(batch, "buffer"):
        return int(batch.buffer.nbytes)
    return int(sum(getattr(v, "nbytes", 0) for v in batch.values()))
