"""The ``batch`` section: the export's towers, candidate generation and the nightly retrain rule."""

from __future__ import annotations

from enum import Enum, StrEnum

from pydantic import Field

from xrec_spark.config.base import _Section


class SearchKind(str, Enum):
    EXACT = "exact"
    FAISS = "faiss"


class InferenceDevice(StrEnum):
    """Where the export's workers (and the evaluation's, for vectors the export lacks) run the
    towers: ``auto`` is CUDA when the driver sees a CUDA device, else the CPU; ``cuda`` also
    when only the executors have GPUs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class ServedModel(StrEnum):
    """Which model of a training run the export and candidates use when no version is named:
    the trained model (``teacher``) or its distilled student (``model.distill``)."""

    TEACHER = "teacher"
    STUDENT = "student"


class BatchConfig(_Section):
    # The run's model the export and candidates serve by default (an explicit
    # --model-version wins).
    model: ServedModel = ServedModel.TEACHER
    top_k: int = Field(100, ge=1)
    exclude_seen: bool = True
    user_top_categories: int = Field(3, ge=0)
    # Also each user's N untouched categories ranked highest by silver.category_transfer from
    # the categories they use: the cross-category recommendations.
    transfer_categories: int = Field(0, ge=0)
    # Categories (natural ids) every user gets a vector and candidates in; empty = the transfer
    # targets, train.target_categories.
    categories_for_all_users: list[str] = Field(default_factory=list)
    # Serve every user the categories nobody has train activity in yet (a category launched
    # after the train cutoff): its items are scored from their content until it has history.
    serve_new_categories: bool = True
    search: SearchKind = SearchKind.EXACT
    # Users of one category ranked per kernel call in candidate generation (memory: this many
    # users x the K kept, plus the kernel's tiles).
    users_per_block: int = Field(4096, ge=1)
    faiss_nlist: int = Field(256, ge=1)
    faiss_nprobe: int = Field(32, ge=1)
    # Rows per forward pass of the export's towers, which run on device (InferenceDevice).
    export_batch_size: int = Field(4096, ge=1)
    device: InferenceDevice = InferenceDevice.AUTO
    # Nightly: retrain when the latest model is this many days older than the run date
    # (1 = every night, 0 = never on schedule, only on drift) ...
    retrain_every_days: int = Field(7, ge=0)
    # ... or when the events added since its training are this share of the events it saw.
    drift_threshold: float = Field(0.2, gt=0)
    # A category added after the model's training with at most few_shot_max_events train
    # interactions does not force a retrain: the nightly adds its head to the latest model,
    # starts it from its few_shot_neighbours nearest categories (silver.category_transfer) and
    # fits only that category's parameters for few_shot_steps batches of few_shot_batch_size
    # at few_shot_lr, saved as a new model version (gold.runs, parent = the trained model).
    # false: a new category retrains everything, as any category above the threshold does.
    few_shot: bool = True
    few_shot_max_events: int = Field(1000, ge=0)
    few_shot_neighbours: int = Field(3, ge=1)
    few_shot_steps: int = Field(50, ge=0)
    few_shot_batch_size: int = Field(256, ge=1)
    few_shot_lr: float = Field(0.01, gt=0)
    # Items with train positives that had none when the model trained (new items, in a
    # category the model knows or one the same night adapts to) get id and bias rows fitted the
    # same way, within their category's softmax: their own examples plus few_shot_context rows
    # of the category's other examples per example of theirs (importance-weighted), so they
    # are ranked from their events instead of from content and popularity alone.
    few_shot_items: bool = True
    few_shot_context: float = Field(4.0, ge=0)
