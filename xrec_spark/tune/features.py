"""Feature tables for tuning trials: one shared set, and a private prefix per changed
``features`` section.

A trial that leaves ``features`` as it is trains on the lakehouse's own silver tables. A trial
that changes it (``features.negatives.*``) gets ``<root>/tune/features/<hash>``: its bronze
tables are shallow clones of the main ones (metadata only, the data files are shared) and its
silver tables are built there by the ordinary features job, once per distinct ``features``
section; a later trial with the same section finds them built (the features job skips when
bronze and config are unchanged).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pyspark.sql import SparkSession

from xrec_spark.config import JobConfig
from xrec_spark.lineage import digest
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, Lakehouse, TableNotFoundError

log = logging.getLogger(__name__)

_MARKER = "bronze_source.json"


def features_hash(cfg: JobConfig) -> str:
    return digest(cfg.features.model_dump(mode="json"), 12)


def prefix_root(base: Lakehouse, cfg: JobConfig) -> str:
    return f"{base.root}/tune/features/{features_hash(cfg)}"


def trial_lakehouse(spark: SparkSession, base: Lakehouse, base_cfg: JobConfig, cfg: JobConfig) -> Lakehouse:
    """The lakehouse a trial with config ``cfg`` trains from (built when it is a new prefix)."""
    if cfg.features == base_cfg.features:
        return base
    from xrec_spark.features.build import build_features

    lake = Lakehouse(spark, prefix_root(base, cfg))
    source = {spec.qualified: base.version(spec) for spec in (BRONZE_EVENTS, BRONZE_ITEMS)}
    if source[BRONZE_EVENTS.qualified] is None:
        raise TableNotFoundError(f"tuning features.* needs {BRONZE_EVENTS.qualified} at {base.path(BRONZE_EVENTS)}; "
                                 "run `xrec ingest` first")
    marker = Path(lake.root) / _MARKER
    known = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None
    if known != source:
        log.info("trial features differ from the base (features %s): cloning bronze into %s", features_hash(cfg),
                 lake.root)
        for spec in (BRONZE_EVENTS, BRONZE_ITEMS):
            version = source[spec.qualified]
            if version is not None:
                lake.shallow_clone(spec, base, version)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(source, sort_keys=True), encoding="utf-8")
    summary = build_features(spark, lake, cfg.with_overrides([f"lakehouse.root={lake.root}"]))
    log.info("trial features at %s: %s", lake.root, "unchanged, reused" if summary.skipped else "built")
    return lake
