"""The whole configuration of a job: every section nested in :class:`JobConfig`."""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

from xrec_spark.config.base import _Section
from xrec_spark.config.batch import BatchConfig
from xrec_spark.config.evaluation import EvalConfig
from xrec_spark.config.features import FeaturesConfig
from xrec_spark.config.ingest import IngestConfig, SyntheticConfig
from xrec_spark.config.model import ModelConfig
from xrec_spark.config.storage import LakehouseConfig, SparkConfig
from xrec_spark.config.train import TrainConfig


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
        # Imported here: loading.py builds JobConfig, so importing it at the top would be circular.
        from xrec_spark.config.loading import build_config

        return build_config(self.model_dump(mode="json"), overrides)
