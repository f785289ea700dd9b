"""Typed, validated configuration for every job.

One frozen pydantic model per concern (spark, lakehouse, ingest, synthetic, features, model,
train, batch, eval), nested in :class:`JobConfig`. Jobs build it with :func:`load_config` from a
YAML file plus ``--set section.key=value`` overrides; an unknown key or a wrong type fails at
start with :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xrec_spark import names


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


# Closed choices whose values leave the config as text (phase names in the trainer's records
# and log lines, the process-group backend, split and system names in tables) are StrEnums:
# their str() and f-string form is the value ("freeze", not "TransferPhase.FREEZE"). The
# (str, Enum) ones are read through ``.value`` where they leave the config.


# --------------------------------------------------------------------------- spark / storage


class DeltaJars(str, Enum):
    """How the JVM side of Delta Lake reaches Spark.

    ``local``: jars resolved once from Maven Central into ``jars_dir`` and passed as
    ``spark.jars`` (no network after the first run). ``packages``: ``spark.jars.packages``, for
    clusters that resolve themselves. ``provided``: the platform already has Delta (Databricks,
    or ``spark-submit --packages``).
    """

    LOCAL = "local"
    PACKAGES = "packages"
    PROVIDED = "provided"


class DeltaConfig(_Section):
    version: str = "4.0.1"
    scala_version: str = "2.13"
    jars: DeltaJars = DeltaJars.LOCAL
    jars_dir: str = ".cache/jars"


class SparkConfig(_Section):
    master: str = "local[*]"
    app_name: str = "xrec-spark"
    shuffle_partitions: int = Field(8, ge=1)
    driver_memory: str = "4g"
    # Interpreter for Python workers; None = the driver's own interpreter in local mode.
    python: str | None = None
    delta: DeltaConfig = DeltaConfig()
    conf: dict[str, str] = Field(default_factory=dict)


class LakehouseConfig(_Section):
    """Root of all Delta tables: a local folder (relative to the working directory) or a URI."""

    root: str = "lakehouse"


# --------------------------------------------------------------------------- ingest


class FileFormat(str, Enum):
    AUTO = "auto"
    PARQUET = "parquet"
    CSV = "csv"
    JSON = "json"


class TimestampUnit(str, Enum):
    """How a numeric timestamp column is read; strings are parsed with ``ts_format`` or as ISO 8601."""

    SECONDS = "seconds"
    MILLIS = "millis"


class CsvOptions(_Section):
    delimiter: str = ","
    header: bool = True
    encoding: str = "UTF-8"


class EventColumns(_Section):
    """Source column for each bronze.events field (None: not in the source)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    event_ts: str = "event_ts"
    value: str | None = "rating"
    event_type: str | None = None
    category: str | None = None


class ItemColumns(_Section):
    """Source column for each bronze.items field (None: not in the source)."""

    item_id: str = "item_id"
    category: str | None = "category"
    title: str | None = "title"
    text: str | None = None
    brand: str | None = None
    price: str | None = None
    image_vector: str | None = None


class EventSource(_Section):
    path: str
    format: FileFormat = FileFormat.AUTO
    columns: EventColumns = EventColumns()
    csv: CsvOptions = CsvOptions()
    ts_format: str = "yyyy-MM-dd HH:mm:ss"
    ts_unit: TimestampUnit = TimestampUnit.SECONDS
    # event_type for every row when the source has no event_type column.
    default_event_type: str = "rating"


class ItemSource(_Section):
    path: str
    format: FileFormat = FileFormat.AUTO
    columns: ItemColumns = ItemColumns()
    csv: CsvOptions = CsvOptions()


class IngestConfig(_Section):
    events: EventSource | None = None
    # None: items (id, category) are derived from the events' category column.
    items: ItemSource | None = None
    event_types: list[str] = Field(default_factory=lambda: ["rating", "click", "view", "cart", "purchase"])
    value_min: float = 1.0
    value_max: float = 5.0
    min_ts: date = date(1990, 1, 1)
    # Rows dated after now + this many days are rejected as "future".
    future_tolerance_days: int = Field(1, ge=0)
    # Skip input files already ingested unchanged under the same rules (meta.ingested_files);
    # false reads every file again (the MERGEs still add nothing twice).
    skip_unchanged: bool = True

    @model_validator(mode="after")
    def _range_is_ordered(self) -> "IngestConfig":
        if self.value_min > self.value_max:
            raise ValueError(f"value_min ({self.value_min}) must be <= value_max ({self.value_max})")
        return self


class SyntheticConfig(_Section):
    """Synthetic events with planted cross-category taste (see ``ingest/synthetic.py``)."""

    users: int = Field(2_000, ge=1)
    items: int = Field(5_000, ge=1)
    categories: int = Field(8, ge=1)
    events: int = Field(100_000, ge=1)
    taste_clusters: int = Field(6, ge=1)
    popularity_skew: float = Field(1.1, ge=0.0)
    image_dim: int = Field(0, ge=0)
    start: date = date(2020, 1, 1)
    days: int = Field(365, ge=1)
    seed: int = 7
    files: int = Field(4, ge=1)
    # Share of events where a user picks from their own taste cluster's items (else any item
    # of the category): the strength of the planted cross-category signal.
    cluster_affinity: float = Field(0.8, ge=0.0, le=1.0)
    # From this day (0-based) on, a new category with new items and new users appears
    # (None: never); new_category_share of that period's events go to it.
    new_category_day: int | None = Field(None, ge=0)
    new_category_items: int = Field(200, ge=1)
    new_category_users: int = Field(100, ge=1)
    new_category_share: float = Field(0.2, ge=0.0, le=1.0)


# --------------------------------------------------------------------------- features


class NegativeStrategy(str, Enum):
    UNIFORM = "uniform"
    POPULARITY = "popularity"
    CROSS_CATEGORY = "cross_category"


class HistoryAsOf(StrEnum):
    """Where a training example's history stops (``features.history_as_of``)."""

    EVENT = "event"
    DAY = "day"
    # The user's end-of-train history (the one served) without the example's own item: the
    # model learns to complete a profile, as EASE and Mult-DAE do, instead of predicting the
    # next item from a shorter past that serving never shows it.
    PROFILE = "profile"


class SplitConfig(_Section):
    """Global temporal split: by fractions of events in time order, or by explicit dates."""

    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    valid_start: date | None = None
    test_start: date | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "SplitConfig":
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("valid_fraction + test_fraction must be < 1")
        if (self.valid_start is None) != (self.test_start is None):
            raise ValueError("valid_start and test_start must be given together")
        if self.valid_start and self.test_start and self.valid_start > self.test_start:
            raise ValueError("valid_start must not be after test_start")
        return self


class NegativesConfig(_Section):
    per_positive: int = Field(4, ge=0)
    strategies: list[NegativeStrategy] = Field(
        default_factory=lambda: [NegativeStrategy.UNIFORM, NegativeStrategy.POPULARITY]
    )
    popularity_alpha: float = Field(0.75, ge=0.0)
    # Popular items per category considered as cross-category hard negatives.
    hard_pool_size: int = Field(200, ge=1)
    # Draws per negative slot: a draw that hits one of the user's train positives is redrawn
    # up to attempts - 1 times; a slot whose draws all hit is left empty (counted in the summary).
    attempts: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _strategies_to_draw_from(self) -> "NegativesConfig":
        if self.per_positive > 0 and not self.strategies:
            raise ValueError(f"strategies is empty but per_positive is {self.per_positive}; give at least one of "
                             f"{[s.value for s in NegativeStrategy]} or set per_positive: 0")
        return self


class FeaturesConfig(_Section):
    # None: every event is a positive; else value >= this threshold.
    positive_min_value: float | None = None
    recency_half_life_days: float = Field(365.0, gt=0)
    # A training example's weight is its recency weight times n^-power, n = its user's train
    # positives in its category: 0 counts every event once (heavy users dominate the loss), 1
    # counts every (user, category) once, as the evaluation does.
    group_weight_power: float = Field(0.0, ge=0, le=1)
    history_length: int = Field(20, ge=1)
    # A training example's history: the user's train positives strictly before its event
    # ("event"), or before its UTC day ("day"). Served histories are days to weeks old when the
    # next item comes; "day" keeps the items of the same session (seconds apart in MovieLens,
    # ordered by the rating page) out of what the model learns to predict from. "profile": the
    # user's last history_length train positives at the end of train, minus the example's item.
    history_as_of: HistoryAsOf = HistoryAsOf.EVENT
    split: SplitConfig = SplitConfig()
    negatives: NegativesConfig = NegativesConfig()
    # Files of silver.training_examples: petastorm needs >= processes x a few row groups.
    training_files: int = Field(8, ge=1)
    seed: int = 42


# --------------------------------------------------------------------------- model


class HistoryEncoderKind(str, Enum):
    NONE = "none"
    MEAN = "mean"
    ATTENTION = "attention"
    GRU = "gru"
    # Attention whose query is the *target* category: a user's books history weighs
    # differently when scoring electronics than when scoring music.
    CATEGORY_ATTENTION = "category_attention"


class BottomKind(str, Enum):
    SHARED = "shared"
    MMOE = "mmoe"


class ContentEncoderKind(str, Enum):
    NONE = "none"
    HASHED = "hashed"
    SENTENCE = "sentence"


class FusionKind(str, Enum):
    CONCAT = "concat"
    GATED = "gated"


class LossKind(str, Enum):
    BCE = "bce"
    SAMPLED_SOFTMAX = "sampled_softmax"
    SOFTMAX = "softmax"


class TaskWeighting(str, Enum):
    UNIFORM = "uniform"
    SIZE = "size"
    UNCERTAINTY = "uncertainty"


class ModelConfig(_Section):
    embedding_dim: int = Field(64, ge=1)
    hidden_dim: int = Field(128, ge=1)
    history_encoder: HistoryEncoderKind = HistoryEncoderKind.MEAN
    bottom: BottomKind = BottomKind.SHARED
    experts: int = Field(4, ge=1)
    content_encoder: ContentEncoderKind = ContentEncoderKind.HASHED
    hash_buckets: int = Field(2**18, ge=16)
    fusion: FusionKind = FusionKind.CONCAT
    id_dropout: float = Field(0.1, ge=0.0, le=1.0)
    share_across_categories: bool = True
    loss: LossKind = LossKind.BCE
    task_weighting: TaskWeighting = TaskWeighting.UNIFORM
    temperature: float = Field(0.1, gt=0)
    distill: bool = False
    # Hashed n-gram ids kept per item text (word unigrams, then bigrams, then char trigrams).
    max_tokens: int = Field(48, ge=1)
    # Seed of the model's own generator (initialisation and id-dropout masks).
    seed: int = 0
    # Embedding size of the distilled student two-tower (used when distill is true).
    student_dim: int = Field(16, ge=1)
    # score = b(i) + <f_k(h_u), g(i)>: a per-item bias that starts at log(1 + train_count), with
    # the dot product starting at 0 (heads zero-initialised), so an untrained model ranks
    # exactly like per-category popularity. Exported as one extra vector dimension.
    item_bias: bool = False
    # loss=softmax: categories with at most this many items are ranked against all of them;
    # larger ones against a uniform pool of softmax_pool items (plus the batch's positives),
    # with the log-Q correction.
    softmax_full_max_items: int = Field(50_000, ge=1)
    softmax_pool: int = Field(4096, ge=1)
    # Items with fewer train positives than this own no id row: they are scored from category,
    # popularity and content (an id row that one example trains only memorises it).
    min_item_count: int = Field(0, ge=0)
    # Id, bias and hashed-text tables with sparse gradients (SparseAdam; gloo all-reduces them
    # sparsely under DDP): a step then costs what the batch touches, not what the catalogue
    # holds. Off for nccl, which has no sparse all-reduce.
    sparse_embeddings: bool = False
    # Share of training rows whose user id and whole history are dropped, so the model also
    # learns to rank for a user it knows nothing of (cold users: popularity plus what the
    # category's head learned for them), not only for users with a history.
    history_dropout: float = Field(0.0, ge=0.0, le=1.0)
    # Learning-rate factor of the item bias b(i) (0 keeps the popularity prior fixed, so that
    # training only learns the user-item part on top of it).
    item_bias_lr_scale: float = Field(1.0, ge=0.0)
    # A row per user added to the history encoding. False: the user is their history alone, as
    # in EASE or Mult-DAE; no row that memorises a user's train items, and a user who arrives
    # after training is served like one who was there.
    user_ids: bool = True
    # Share of history items dropped from each training row (Mult-DAE's input dropout): the
    # model learns to complete a profile from part of it instead of leaning on a few items.
    history_item_dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _users_represented(self) -> "ModelConfig":
        if not self.user_ids and self.history_encoder is HistoryEncoderKind.NONE:
            raise ValueError("user_ids is false and history_encoder is none: a user would have no representation; "
                             "set user_ids: true or pick a history encoder")
        return self


# --------------------------------------------------------------------------- train


class LoaderKind(str, Enum):
    PETASTORM = "petastorm"
    ARROW = "arrow"


class TransferPhase(StrEnum):
    """A transfer phase (``train.phases[].name``; the rules are in ``model/transfer.py``):
    pretrain trains the shared parameters and the source heads on source categories, freeze
    the target heads alone on target categories, finetune everything on both."""

    PRETRAIN = "pretrain"
    FREEZE = "freeze"
    FINETUNE = "finetune"


class PhaseConfig(_Section):
    """One transfer phase: pretrain (shared, sources), freeze (target heads), finetune (all)."""

    name: TransferPhase
    epochs: int = Field(1, ge=0)
    lr: float = Field(1e-3, gt=0)
    shared_lr_scale: float = Field(1.0, ge=0)


class PrunerKind(str, Enum):
    NONE = "none"
    MEDIAN = "median"
    HYPERBAND = "hyperband"


class PrunerConfig(_Section):
    """How a tuning trial is pruned on its per-epoch valid metric (``xrec tune``).

    ``median``: stop a trial whose metric at an epoch is below the median of the finished
    trials at that epoch, once ``startup_trials`` trials finished and after ``warmup_epochs``.
    ``hyperband``: successive halving between ``min_epochs`` and ``max_epochs`` (None: the
    trial's total epochs) with ``reduction_factor``.
    """

    kind: PrunerKind = PrunerKind.MEDIAN
    startup_trials: int = Field(2, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    min_epochs: int = Field(1, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    reduction_factor: int = Field(3, ge=2)


class TrialConfig(_Section):
    """The Optuna trial a training run reports its per-epoch valid metric to; set by
    ``xrec tune`` (see ``xrec_spark/tune/``), read on rank 0 only."""

    # Optuna storage: an RDB URL (``sqlite:///...``) or the path of a journal file.
    storage: str
    study: str
    trial_id: int = Field(ge=0)
    number: int = Field(ge=0)
    pruner: PrunerConfig = PrunerConfig()


class DistBackend(StrEnum):
    """torch.distributed backend of the training ranks on CUDA (CPU ranks always use gloo)."""

    GLOO = "gloo"
    NCCL = "nccl"


class TrainConfig(_Section):
    num_processes: int = Field(2, ge=1)
    local_mode: bool = True
    # Training ranks on CUDA (TorchDistributor's use_gpu); the export's device is batch.device.
    use_gpu: bool = False
    backend: DistBackend = DistBackend.GLOO
    loader: LoaderKind = LoaderKind.PETASTORM
    batch_size: int = Field(1024, ge=1)
    phases: list[PhaseConfig] = Field(
        default_factory=lambda: [
            PhaseConfig(name=TransferPhase.PRETRAIN, epochs=2, lr=2e-3),
            PhaseConfig(name=TransferPhase.FREEZE, epochs=1, lr=2e-3),
            PhaseConfig(name=TransferPhase.FINETUNE, epochs=1, lr=1e-3, shared_lr_scale=0.1),
        ]
    )
    # Target categories (natural ids) of the transfer phases; empty = all categories are targets.
    target_categories: list[str] = Field(default_factory=list)
    source_top_n: int = Field(5, ge=1)
    grad_clip: float = Field(5.0, gt=0)
    # Decoupled weight decay (AdamW) on every trained parameter but the item bias.
    weight_decay: float = Field(0.0, ge=0)
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int = Field(200, ge=1)
    patience: int = Field(2, ge=0)
    eval_k: int = Field(10, ge=1)
    tracking_uri: str | None = None
    seed: int = 13
    # Validation (user, category) groups scored per epoch on rank 0; more are sampled down.
    valid_max_groups: int = Field(20_000, ge=1)
    # Set by `xrec tune` for each trial (None: a plain training run).
    trial: TrialConfig | None = None


# --------------------------------------------------------------------------- batch / eval


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


class BatchConfig(_Section):
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


class EvalSplit(StrEnum):
    """The held-out split ``xrec evaluate`` scores (values of silver.interactions.split)."""

    VALID = names.VALID
    TEST = names.TEST


class Baseline(StrEnum):
    """A baseline system of ``xrec evaluate`` (also its ``system`` in gold.metrics). The trained
    ones rank with a model trained as a baseline, named in ``eval.baseline_versions``."""

    POPULARITY_GLOBAL = "popularity_global"
    POPULARITY_CATEGORY = "popularity_category"
    ALS = "als"
    EASE = "ease"
    NO_SHARING = "no_sharing"
    SHARED_NO_TRANSFER = "shared_no_transfer"


TRAINED_BASELINES: tuple[Baseline, ...] = (Baseline.NO_SHARING, Baseline.SHARED_NO_TRANSFER)
_SAFE_ID = re.compile(names.SAFE_ID_PATTERN)


class EvalConfig(_Section):
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50])
    bootstrap_samples: int = Field(1000, ge=0)
    report_dir: str = "report"
    seed: int = 5
    # Held-out split scored by `xrec evaluate`; baselines are tuned on valid whatever this is.
    split: EvalSplit = EvalSplit.TEST
    # Baseline systems (no_sharing and shared_no_transfer need their training runs, given in
    # baseline_versions).
    baselines: list[Baseline] = Field(default_factory=lambda: [
        Baseline.POPULARITY_GLOBAL, Baseline.POPULARITY_CATEGORY, Baseline.ALS, Baseline.EASE])
    # Also rank with the trained model (gold.user_embeddings / gold.item_embeddings).
    include_model: bool = True
    # Also score the served lists of gold.candidates (latest run_date) as system "candidates".
    include_candidates: bool = False
    # model_version (gold.runs) of each trained baseline in baselines, e.g.
    # {no_sharing: <version>, shared_no_transfer: <version>}.
    baseline_versions: dict[Baseline, str] = Field(default_factory=dict)
    # Model version to evaluate; None = the latest run in gold.runs.
    model_version: str | None = None
    # gold.metrics partition key; None = derived from split, systems, model and input versions.
    # Written into a replaceWhere predicate, so only letters, digits and . _ : + -.
    eval_id: str | None = None
    # ALS staged search, every point chosen by NDCG@tune_k on valid: stage 1 fits
    # als_reg_params x als_alphas at als_base_rank, stage 2 fits als_ranks at the best
    # (reg, alpha). These defaults are the full search (bench/quality.py runs them); the demo
    # config (conf/local.yaml) sets a small one.
    als_base_rank: int = Field(64, ge=1)
    als_reg_params: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0])
    als_alphas: list[float] = Field(default_factory=lambda: [1.0, 5.0, 20.0])
    als_ranks: list[int] = Field(default_factory=lambda: [32, 64, 128])
    als_max_iter: int = Field(15, ge=1)
    # EASE (closed-form item-item) over the ease_items most popular train items of all
    # categories; lambda (L2) chosen on valid from ease_lambdas. Driver memory ~ 4 x N^2 floats.
    ease_items: int = Field(10_000, ge=1)
    ease_lambdas: list[float] = Field(default_factory=lambda: [10.0, 50.0, 200.0, 1000.0, 5000.0])
    tune_k: int = Field(10, ge=1)
    # Users of one category ranked per kernel call in full ranking, for every system (memory:
    # this many users x the largest K kept, plus the kernel's tiles).
    users_per_block: int = Field(1024, ge=1)

    @field_validator("eval_id")
    @classmethod
    def _safe_eval_id(cls, value: str | None) -> str | None:
        if value is not None and not _SAFE_ID.match(value):
            raise ValueError("may only hold letters, digits and . _ : + - (it goes into a replaceWhere predicate)")
        return value

    @model_validator(mode="after")
    def _known_values(self) -> "EvalConfig":
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a non-empty list of cut-offs >= 1; got {self.ks}")
        for key in ("als_reg_params", "als_alphas", "als_ranks", "ease_lambdas"):
            values = getattr(self, key)
            if not values or min(values) <= 0:
                raise ValueError(f"{key} must be a non-empty list of positive values; got {values}")
        return self

    @model_validator(mode="after")
    def _systems_to_evaluate(self) -> "EvalConfig":
        # Checked here, not when the job reaches the system: the ALS search runs first and takes
        # minutes.
        if not self.baselines and not self.include_model and not self.include_candidates:
            raise ValueError("nothing to evaluate: baselines is empty and include_model and include_candidates "
                             "are false")
        missing = [b.value for b in self.baselines if b in TRAINED_BASELINES and not self.baseline_versions.get(b)]
        if missing:
            raise ValueError(f"baselines has {missing} but baseline_versions has no model_version for them: train "
                             "them (bench/quality.py does) and pass {name: model_version}")
        untrained = [b.value for b in self.baseline_versions if b not in TRAINED_BASELINES]
        if untrained:
            raise ValueError(f"baseline_versions has {untrained}: only the trained baselines "
                             f"{[b.value for b in TRAINED_BASELINES]} have a model_version")
        return self


# --------------------------------------------------------------------------- the whole


class JobConfig(_Section):
    spark: SparkConfig = SparkConfig()
    lakehouse: LakehouseConfig = LakehouseConfig()
    ingest: IngestConfig = IngestConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    batch: BatchConfig = BatchConfig()
    eval: EvalConfig = EvalConfig()

    def fingerprint(self) -> str:
        """Stable sha256 of the effective configuration (for lineage rows)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def with_overrides(self, overrides: Iterable[str]) -> "JobConfig":
        """A new config with ``section.key=value`` overrides applied (self is unchanged)."""
        return build_config(self.model_dump(mode="json"), overrides)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    # YAML scalars: 3 -> int, 0.5 -> float, true -> bool, [a, b] -> list, plain text -> str.
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from e
    return key.strip().split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = JobConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


# Keys that were renamed: the old name fails naming the new one.
RENAMED_KEYS: dict[str, str] = {
    "batch.target_categories": "batch.categories_for_all_users",
    "batch.block_size": "batch.users_per_block",
    "eval.block_size": "eval.users_per_block",
}


def with_renamed_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with every old key of :data:`RENAMED_KEYS` moved to its new name.

    For configs the project wrote itself (a run's stored spec): a run trained before a rename
    stays readable, and resumable. A user's file keeps failing on an old name instead.
    """
    out: dict[str, Any] = json.loads(json.dumps(dict(data), default=str))
    for old, new in RENAMED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = out.get(old_section)
        if isinstance(section, dict) and old_key in section:
            out.setdefault(new_section, {})[new_key] = section.pop(old_key)
    return out


def _format_errors(error: ValidationError, origin: str) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if err["type"] == "extra_forbidden" and key in RENAMED_KEYS:
            lines.append(f"{key}: renamed to {RENAMED_KEYS[key]}")
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            lines.append(f"{key}: unknown key{hint}")
        elif isinstance(err.get("input"), dict):
            # A check across a section's keys: the message names them; the section is too long to echo.
            lines.append(f"{key}: {err['msg']}")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid configuration from {origin}:\n  " + "\n  ".join(lines)


def build_config(data: Mapping[str, Any], overrides: Iterable[str] = (), origin: str = "<dict>") -> JobConfig:
    """Validate a plain mapping plus ``section.key=value`` overrides into a :class:`JobConfig`."""
    merged: dict[str, Any] = json.loads(json.dumps(dict(data), default=str))
    for item in overrides:
        path, value = _parse_override(item)
        _apply_override(merged, path, value)
    try:
        return JobConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from None


def read_yaml_file(file: Path, what: str, error: type[Exception]) -> Any:
    """The YAML document of ``file`` ({} when empty); ``error`` names ``what`` the file is when
    it is missing or not YAML."""
    if not file.is_file():
        raise error(f"{what} file not found: {file}")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{what} file {file} is not valid YAML: {e}") from e


def _read_yaml(file: Path) -> dict[str, Any]:
    data = read_yaml_file(file, "config", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file}: top level must be a mapping of sections")
    return data


def merge_sections(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` on ``base``: mappings merge key by key, any other value (lists too) replaces."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_sections(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | Sequence[str | Path] | None = None, overrides: Iterable[str] = ()) -> JobConfig:
    """Read a YAML config (None: all defaults), or several merged in order (each an overlay on
    the ones before, e.g. ``conf/local.yaml`` then a tuned ``best.yaml``), and apply overrides."""
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return build_config({}, overrides, origin="defaults")
    data: dict[str, Any] = {}
    for file in paths:
        data = merge_sections(data, _read_yaml(Path(file)))
    return build_config(data, overrides, origin=" + ".join(str(Path(p)) for p in paths))
