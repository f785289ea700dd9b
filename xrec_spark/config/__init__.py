"""Typed, validated configuration for every job.

One frozen pydantic model per concern (spark, lakehouse, ingest, synthetic, features, model,
train, batch, eval), nested in :class:`JobConfig`. Jobs build it with :func:`load_config` from a
YAML file plus ``--set section.key=value`` overrides; an unknown key or a wrong type fails at
start with :class:`ConfigError` naming the key.

One module per concern: ``base`` (the shared section base and :class:`ConfigError`),
``storage`` (spark, lakehouse), ``ingest`` (ingest, synthetic), ``features``, ``model``,
``train``, ``batch``, ``evaluation`` (eval), ``job`` (:class:`JobConfig`) and ``loading``
(YAML files, overrides, error messages). Import from the package: every public name is here.
"""

from xrec_spark.config.base import ConfigError
from xrec_spark.config.batch import BatchConfig, InferenceDevice, SearchKind, ServedModel
from xrec_spark.config.evaluation import TRAINED_BASELINES, Baseline, EvalConfig, EvalSplit
from xrec_spark.config.features import (
    FeaturesConfig, HistoryAsOf, NegativesConfig, NegativeStrategy, SplitConfig,
)
from xrec_spark.config.ingest import (
    CsvOptions, EventColumns, EventSource, FileFormat, IngestConfig, ItemColumns, ItemSource, SyntheticConfig,
    TimestampUnit,
)
from xrec_spark.config.job import JobConfig
from xrec_spark.config.loading import (
    RENAMED_KEYS, build_config, load_config, merge_sections, read_yaml_file, with_renamed_keys,
)
from xrec_spark.config.model import (
    BottomKind, ContentEncoderKind, FusionKind, HistoryEncoderKind, InitFrom, LossKind, ModelConfig, TaskWeighting,
)
from xrec_spark.config.storage import DeltaConfig, DeltaJars, LakehouseConfig, SparkConfig
from xrec_spark.config.train import (
    DistBackend, LoaderKind, PhaseConfig, PrunerConfig, PrunerKind, TrainConfig, TransferPhase, TrialConfig,
    WeightAverageConfig, WeightAverageKind,
)

__all__ = [
    "RENAMED_KEYS", "TRAINED_BASELINES", "Baseline", "BatchConfig", "BottomKind", "ConfigError", "ContentEncoderKind",
    "CsvOptions", "DeltaConfig", "DeltaJars", "DistBackend", "EvalConfig", "EvalSplit", "EventColumns", "EventSource",
    "FeaturesConfig", "FileFormat", "FusionKind", "HistoryAsOf", "HistoryEncoderKind", "InferenceDevice", "InitFrom",
    "IngestConfig", "ItemColumns", "ItemSource", "JobConfig", "LakehouseConfig", "LoaderKind", "LossKind",
    "ModelConfig", "NegativeStrategy", "NegativesConfig", "PhaseConfig", "PrunerConfig", "PrunerKind", "SearchKind", "ServedModel",
    "SparkConfig", "SplitConfig", "SyntheticConfig", "TaskWeighting", "TimestampUnit", "TrainConfig",
    "TransferPhase", "TrialConfig", "build_config", "load_config", "merge_sections", "read_yaml_file",
    "WeightAverageConfig", "WeightAverageKind", "with_renamed_keys",
]
