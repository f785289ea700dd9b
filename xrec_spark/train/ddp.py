"""The function every DDP process runs: ``train(spec) -> TrainResult``.

It uses torch, pyarrow/petastorm and the model package only (no SparkSession), so the same
function runs under TorchDistributor and under plain ``torchrun``::

    torchrun --nproc_per_node=2 -m xrec_spark.train.ddp --spec <run_dir>/spec.json

(``xrec train --write-spec`` prints such a spec without training). Whatever rank fails writes
its traceback to ``<run_dir>/errors/rank-<n>.txt`` before the exception leaves the process;
the launcher re-raises it, since TorchDistributor itself reports only "see stdout".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from xrec_spark.train.checkpoints import RunPaths, atomic_write_text
from xrec_spark.train.spec import TrainSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced; identical on every rank."""

    run_id: str
    model_version: str
    run_dir: str
    model_path: str
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_at: dict[str, Any] | None = None
    world_size: int = 1
    input_versions: dict[str, int] = field(default_factory=dict)
    valid_start: dict[str, Any] | None = None   # the untrained model's validation (epoch 0)
    # model.distill: the student's model_version, run_id, model_path, metrics and history.
    student: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainResult":
        return cls(**json.loads(text))

    @classmethod
    def read(cls, path: str | Path) -> "TrainResult":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


class RecordedFailure:
    """Context manager: an exception leaving the block is written, with its traceback, to the
    rank's error file, then propagates unchanged."""

    def __init__(self, paths: RunPaths, rank: int) -> None:
        self.paths, self.rank = paths, rank

    def __enter__(self) -> "RecordedFailure":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if kind is not None and not issubclass(kind, (KeyboardInterrupt, SystemExit)):
            text = "".join(traceback.format_exception(kind, error, tb))
            record = {"rank": self.rank, "time": time.time(), "host": os.uname().nodename,
                      "error": f"{kind.__name__}: {error}", "traceback": text}
            try:
                atomic_write_text(self.paths.error_file(self.rank), json.dumps(record))
            except OSError as e:   # the original error matters more than this one
                log.error("rank %d could not write its error file: %s", self.rank, e)
        return False


def _setup_logging(rank: int) -> None:
    # A fresh rank process has no handlers; a caller that configured logging keeps its own.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
        # petastorm logs its schema inference at INFO and, through pyarrow's legacy dataset
        # API, warns on every reader it opens (in its worker threads too).
        logging.getLogger("petastorm").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"xrec_spark\.train\.loader")


def train(spec: TrainSpec) -> TrainResult:
    """Train one run on this process's rank; the entry point TorchDistributor and torchrun call.

    Rank, world size and master address come from the launcher's environment (torchrun sets
    them); without them this is a world of one.
    """
    if not isinstance(spec, TrainSpec):
        raise TypeError(f"train() needs a TrainSpec, got {type(spec).__name__}")
    rank = int(os.environ.get("RANK", "0") or 0)
    paths = RunPaths.of(spec.run_dir)
    with RecordedFailure(paths, rank):
        _setup_logging(rank)
        # Heavy imports inside: the launcher pickles this function by reference.
        from xrec_spark.train import ranks
        from xrec_spark.train.trainer import Trainer

        cfg = spec.job_config()
        with ranks.process_group(cfg.train.use_gpu, cfg.train.backend.value) as info:
            trainer = Trainer(spec, cfg, info, paths)
            summary = trainer.fit()
            student = None
            if cfg.model.distill:
                from xrec_spark.train.student import fit_student

                student = fit_student(spec, cfg, info, paths, trainer.model, trainer.validation)
            result = TrainResult(run_id=spec.run_id, model_version=spec.model_version, run_dir=str(paths.root),
                                 model_path=str(paths.model), metrics=summary["metrics"],
                                 history=summary["history"], best_at=summary["best_at"],
                                 world_size=info.world_size, input_versions=spec.input_versions(),
                                 valid_start=summary["valid_start"], student=student)
            ranks.on_rank_zero(info, lambda: atomic_write_text(paths.result, result.to_json()))
            return result


def main(argv: list[str] | None = None) -> int:
    """``python -m xrec_spark.train.ddp --spec spec.json`` (under torchrun or alone)."""
    parser = argparse.ArgumentParser(description="Run one training rank from a TrainSpec JSON file.")
    parser.add_argument("--spec", required=True, help="TrainSpec JSON written by the launcher")
    args = parser.parse_args(argv)
    result = train(TrainSpec.read(args.spec))
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(json.dumps({"run_id": result.run_id, "model_path": result.model_path, "metrics": result.metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
