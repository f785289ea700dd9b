"""Training state on disk: where a run keeps its files, and atomic save/load of the state.

A run directory (``<checkpoint_dir>/<run_id>/``) holds:

- ``state.pt``   the resumable training state (model, loss, optimizer, scheduler, grad scaler,
                 every rank's RNG state, the data position and the early-stopping bookkeeping)
- ``model.pt``   the best model so far (``xrec_spark.model.checkpoint.save_model`` format): what
                 later jobs load
- ``spec.json``  the TrainSpec the run was started with (re-runnable with ``torchrun``)
- ``result.json`` the final TrainResult, written once training is complete
- ``errors/rank-<n>.txt`` the traceback of a rank that failed

Every file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a crash leaves the previous complete file or none, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class RunPaths:
    """The files of one run under its directory."""

    root: Path

    @classmethod
    def of(cls, run_dir: str | Path) -> "RunPaths":
        return cls(Path(run_dir))

    @property
    def state(self) -> Path:
        return self.root / "state.pt"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    def student(self, tag: str) -> Path:
        """The model file of the run's student ``tag`` (TrainSpec.student_tag)."""
        return self.root / f"{tag}.pt"

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def errors(self) -> Path:
        return self.root / "errors"

    def error_file(self, rank: int) -> Path:
        return self.errors / f"rank-{rank}.txt"


@dataclass
class Position:
    """Where training stands: the next step to run is ``step`` (0-based) of ``epoch`` of phase
    number ``phase``; ``global_step`` counts steps done over all phases. The epoch's running
    loss sums travel with it so a resumed epoch reports the same mean loss."""

    phase: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    rows: float = 0.0
    seconds: float = 0.0


@dataclass
class RunRecord:
    """Early-stopping bookkeeping and the per-epoch history (also what tracking logs)."""

    best_metric: float | None = None
    best_at: dict[str, Any] | None = None
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    # The untrained model's validation (valid_metric, valid_groups, valid_by_slice): epoch 0 of the curve.
    start: dict[str, Any] | None = None


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Write a training state dict atomically (``torch.save``)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """Read a state written by :func:`save_state` (tensors on the CPU, no pickled code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:
        raise RuntimeError(f"cannot read training state {path}: {e}; delete it to start the run afresh "
                           "(or run with --fresh)") from e


def pack(position: Position, progress: RunRecord) -> dict[str, Any]:
    """Position and progress as plain JSON-compatible data for a state dict."""
    return {"position": asdict(position), "progress": json.loads(json.dumps(asdict(progress)))}


def unpack(state: dict[str, Any]) -> tuple[Position, RunRecord]:
    return Position(**state["position"]), RunRecord(**state["progress"])


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch RNG state (CPU and, on GPU, the device's)."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(saved: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(saved["cpu"])
    if device.type == "cuda" and "cuda" in saved:
        torch.cuda.set_rng_state(saved["cuda"], device)
