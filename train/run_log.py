"""Run logs: one CSV row per logged step (``metrics.csv``; validations in ``validation.csv``) and the same
scalars in TensorBoard."""

from __future__ import annotations

import csv
import os


class RunLog:
    def __init__(self, out_dir: str, enabled: bool = True, csv_name: str = "metrics.csv",
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = os.path.join(out_dir, csv_name)
        self._fields: list[str] | None = None
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except ImportError:  # tensorboard is in the train extra; a bare install still gets the CSV
                self._tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: round(float(v), 6) for k, v in values.items()}}
        if self._fields is None:
            exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
            if exists:
                with open(self.path) as f:
                    self._fields = next(csv.reader(f))
            else:
                self._fields = list(row)
                with open(self.path, "w", newline="") as f:
                    csv.writer(f).writerow(self._fields)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self._fields, extrasaction="ignore").writerow(row)
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
