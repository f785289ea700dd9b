"""Rank 0's progress report: a tqdm bar in a terminal, plain log lines everywhere else.

Under TorchDistributor or a scheduler stdout is a pipe or a file, where a bar's carriage
returns turn into noise; there we log one line every ``every_s`` seconds and one per epoch.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


def _tqdm_class() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def format_slices(by_slice: dict[str, float]) -> str:
    """``warm 0.0123, cold_user 0.0456``: how the log lines show valid NDCG per user slice."""
    return ", ".join(f"{k} {v:.4f}" for k, v in by_slice.items())


class Progress:
    """Progress of one rank; silent unless ``enabled`` (rank 0)."""

    def __init__(self, enabled: bool, every_s: float = 10.0) -> None:
        self.enabled = enabled
        self.every_s = every_s
        self._bar: Any = None
        self._label = ""
        self._steps = 0
        self._last_log = 0.0
        self._t0 = 0.0
        self._samples = 0.0
        self._use_bar = enabled and sys.stdout.isatty() and _tqdm_class() is not None

    def start_epoch(self, phase: str, epoch: int, epochs: int, steps: int, first_step: int = 0) -> None:
        if not self.enabled:
            return
        self._label = f"{phase} epoch {epoch + 1}/{epochs}"
        self._steps = steps
        self._t0 = self._last_log = time.perf_counter()
        self._samples = 0.0
        if self._use_bar:
            self._bar = _tqdm_class()(total=steps, initial=first_step, desc=self._label, unit="step",
                                      dynamic_ncols=True, leave=False)
        else:
            log.info("%s: %d steps per rank%s", self._label, steps,
                     f", resuming at step {first_step}" if first_step else "")

    def step(self, step: int, loss: float, samples: float) -> None:
        """After step ``step`` (0-based); ``samples``: rows trained by all ranks in this step."""
        if not self.enabled:
            return
        self._samples += samples
        now = time.perf_counter()
        rate = self._samples / max(now - self._t0, 1e-9)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
        elif now - self._last_log >= self.every_s:
            self._last_log = now
            log.info("%s step %d/%d loss %.4f %s samples/s", self._label, step + 1, self._steps, loss,
                     f"{rate:,.0f}")

    def end_epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        metric = record.get("valid_metric")
        slices = format_slices(record.get("valid_by_slice") or {})
        log.info("%s done: loss %.4f, %s samples/s, %.1fs%s", self._label, record["loss"],
                 f"{record['samples_per_s']:,.0f}", record["seconds"],
                 "" if metric is None else f", valid {record['metric_name']} {metric:.4f}"
                 + (f", {slices}" if slices else ""))
