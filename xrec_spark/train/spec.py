"""The plain, picklable description of one training run that the driver hands to every rank.

The driver (Spark side, :mod:`xrec_spark.train.launch`) resolves everything that needs Spark:
the pinned Delta version of every input table and the Parquet files of that version, the
sizes of the index tables, the target and source categories. The ranks
(:func:`xrec_spark.train.ddp.train`) get only this object, so they run the same under
TorchDistributor and under ``torchrun ... -m xrec_spark.train.ddp --spec spec.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from xrec_spark.config import JobConfig, build_config, with_renamed_keys

# Names of the inputs in TrainSpec.inputs (the ``layer.name`` of tables.py, which the ranks
# must not import: it pulls in pyspark).
TRAINING_EXAMPLES = "silver.training_examples"
INTERACTIONS = "silver.interactions"
ITEM_FEATURES = "silver.item_features"
USER_HISTORY = "silver.user_history"
CATEGORY_TRANSFER = "silver.category_transfer"
USER_INDEX = "silver.user_index"
ITEM_INDEX = "silver.item_index"
CATEGORY_INDEX = "silver.category_index"

ResumeMode = Literal["auto", "require", "never"]
RESUME_MODES: tuple[str, ...] = ("auto", "require", "never")


@dataclass(frozen=True)
class InputTable:
    """One input table pinned at a Delta version: where it lives and its files at that version.

    ``partition_by`` names Hive-style partition columns, which Delta keeps in the file paths
    (``category_idx=3/part-...``) and not inside the Parquet files.
    """

    name: str
    path: str
    version: int
    files: tuple[str, ...]
    partition_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sizes:
    """Index sizes (max dense id) the model's embedding tables are built for."""

    n_users: int
    n_items: int
    n_categories: int


# The model keys that say how a student is distilled (model.distill): left out of the teacher's
# run id (turning distillation on does not retrain the teacher) and hashed into the student's.
DISTILL_KEYS = ("distill", "student_dim", "distill_epochs", "distill_lr", "distill_pool", "distill_pointwise",
                "distill_top")


@dataclass(frozen=True)
class TrainSpec:
    """Everything a rank needs; JSON round-trips (``to_json`` / ``from_json``)."""

    run_id: str
    model_version: str
    run_dir: str
    config: dict[str, Any]
    inputs: dict[str, InputTable]
    sizes: Sizes
    target_categories: tuple[int, ...]
    source_categories: tuple[int, ...]
    # Training examples per category_idx (index 0 unused); for size-based task weights.
    category_sizes: tuple[int, ...] | None = None
    resume: ResumeMode = "auto"
    # Test hook: raise on this rank right before this global step (1-based) would run.
    fail_at_step: int | None = None
    fail_rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resume not in RESUME_MODES:
            raise ValueError(f"TrainSpec.resume must be one of {RESUME_MODES}; got {self.resume!r}")
        if TRAINING_EXAMPLES not in self.inputs:
            raise ValueError(f"TrainSpec.inputs has no {TRAINING_EXAMPLES}; got {sorted(self.inputs)}")

    def job_config(self) -> JobConfig:
        """The validated configuration this run was resolved from."""
        return build_config(with_renamed_keys(self.config), origin=f"train spec of run {self.run_id}")

    def input_versions(self) -> dict[str, int]:
        return {name: t.version for name, t in self.inputs.items()}

    @property
    def student_tag(self) -> str:
        """``student-<hash of the distillation settings>``: one student per teacher and settings."""
        settings = {k: self.config["model"].get(k) for k in DISTILL_KEYS}
        return "student-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def student_version(self) -> str:
        """model_version of the run's distilled student (``model.distill``)."""
        return f"{self.model_version}-{self.student_tag}"

    @property
    def student_run_id(self) -> str:
        """gold.runs run_id of the run's distilled student."""
        return f"{self.run_id}-{self.student_tag}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    def write(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(out)
        return out

    @classmethod
    def from_json(cls, text: str) -> "TrainSpec":
        data = json.loads(text)
        try:
            inputs = {k: InputTable(**{**v, "files": tuple(v["files"]),
                                       "partition_by": tuple(v.get("partition_by", ()))})
                      for k, v in data.pop("inputs").items()}
            sizes = Sizes(**data.pop("sizes"))
            for key in ("target_categories", "source_categories"):
                data[key] = tuple(data[key])
            if data.get("category_sizes") is not None:
                data["category_sizes"] = tuple(data["category_sizes"])
            return cls(inputs=inputs, sizes=sizes, **data)
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a TrainSpec JSON document: {e}") from e

    @classmethod
    def read(cls, path: str | Path) -> "TrainSpec":
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"train spec file not found: {file}")
        return cls.from_json(file.read_text(encoding="utf-8"))
