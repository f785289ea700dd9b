"""The features job as one library call: bronze -> every silver table, with lineage.

:func:`build_features` reads ``bronze.events`` / ``bronze.items`` at their current versions,
extends the three indexes (MERGE, insert-only), overwrites the dependent silver tables, and
appends one row to ``meta.job_log`` with the input and output Delta versions.

**Incremental runs.** The run key is a hash of the input versions and ``cfg.features``. When a
successful run of that key is recorded in ``meta.job_log`` (:class:`xrec_spark.lineage.JobRun`)
and every output table is still at the version it wrote, nothing is recomputed (same tables, no
new versions).
Otherwise everything downstream of the indexes is recomputed from the new state; the indexes
only gain the new ids, numbered after their maximum.

Each stage writes its tables and the next stage reads them back from Delta, so nothing is
recomputed from bronze and no DataFrame is cached, except the deduplicated pairs, which feed the
three indexes, the split cutoffs, the interactions and the item categories.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from xrec_spark.config import JobConfig
from xrec_spark.features.history import train_positives, user_history
from xrec_spark.features.indexing import first_seen, new_index_rows
from xrec_spark.features.interactions import (
    index_pairs, label_and_weight, pair_first_times, resolve_categories, split_pairs)
from xrec_spark.features.items import item_categories, item_features, item_text
from xrec_spark.features.matrices import category_transfer, top_transfer_pairs, user_category_affinity
from xrec_spark.features.negatives import sampling_pools, training_examples
from xrec_spark.features.splits import (
    Cutoffs, assign_slices, assign_split, fraction_cutoffs, resolve_cutoffs_config,
)
from xrec_spark.lineage import JobRun, digest
from xrec_spark.names import TRAIN
from xrec_spark.tables import (
    BRONZE_EVENTS, BRONZE_ITEMS, CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS, ITEM_FEATURES, ITEM_INDEX,
    TRAINING_EXAMPLES, USER_CATEGORY_AFFINITY, USER_HISTORY, USER_INDEX, Lakehouse, TableSpec, each_table,
)

log = logging.getLogger(__name__)

JOB = "features"
INPUTS: tuple[TableSpec, ...] = (BRONZE_EVENTS, BRONZE_ITEMS)
OUTPUTS: tuple[TableSpec, ...] = (
    USER_INDEX, ITEM_INDEX, CATEGORY_INDEX, INTERACTIONS, USER_CATEGORY_AFFINITY, CATEGORY_TRANSFER,
    ITEM_FEATURES, USER_HISTORY, TRAINING_EXAMPLES,
)


@dataclass(frozen=True)
class TransferPair:
    """One row of silver.category_transfer with the categories' natural ids."""

    src_category: str
    dst_category: str
    users_both: int
    p_dst_given_src: float
    lift: float
    score: float


@dataclass(frozen=True)
class FeaturesSummary:
    """What a features run produced (or found already built, when ``skipped``)."""

    run_id: str
    skipped: bool
    row_counts: dict[str, int]
    top_transfer: list[TransferPair]
    input_versions: dict[str, int]
    output_versions: dict[str, int]
    valid_start: str
    test_start: str
    new_ids: dict[str, int] = field(default_factory=dict)
    events_read: int = 0
    unknown_category_events: int = 0
    items_without_category: int = 0
    train_positives: int = 0
    empty_negative_slots: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeaturesSummary":
        """The summary a run recorded (its meta.job_log summary) back as the dataclass."""
        data = dict(data)
        data["top_transfer"] = [TransferPair(**p) for p in data.get("top_transfer", [])]
        return cls(**data)

    def format(self) -> str:
        """A short human summary: row counts per table and the top transfer pairs."""
        head = ("features: inputs unchanged since run " if self.skipped else "features: built, run ") + self.run_id
        lines = [head,
                 "inputs: " + ", ".join(f"{k} v{v}" for k, v in sorted(self.input_versions.items())),
                 f"split: train < {self.valid_start} <= valid < {self.test_start} <= test"]
        if not self.skipped:
            lines.append("new ids: " + ", ".join(f"{k} +{v}" for k, v in self.new_ids.items()))
            lines.append(f"events read {self.events_read}, dropped with unknown category "
                         f"{self.unknown_category_events}; indexed items without category "
                         f"{self.items_without_category}; empty negative slots {self.empty_negative_slots}")
        lines.append("rows:")
        lines += [f"  {name:<32} {n:>12,}" for name, n in self.row_counts.items()]
        lines.append("top transfer pairs (score = users_both / sqrt(users_src * users_dst)):")
        lines.append(f"  {'src':>10} -> {'dst':<10} {'users_both':>10} {'P(dst|src)':>10} {'lift':>7} {'score':>7}")
        lines += [f"  {p.src_category:>10} -> {p.dst_category:<10} {p.users_both:>10} "
                  f"{p.p_dst_given_src:>10.3f} {p.lift:>7.2f} {p.score:>7.3f}" for p in self.top_transfer]
        return "\n".join(lines)


# Bumped when a rule or the sampler changes what the same inputs and config produce, so that a
# lakehouse built by an older release is rebuilt rather than skipped as unchanged.
# 2: negatives drawn in the per-user pass (numpy hashes instead of Spark's xxhash64).
# 3: no look-ahead: a pair's row comes from the split of its first event, item categories from train.
LOGIC_VERSION = 3


def run_key(input_versions: dict[str, int], cfg: JobConfig) -> str:
    """Hash of what decides the output: the input versions, the features config and
    :data:`LOGIC_VERSION`."""
    payload = {"inputs": dict(sorted(input_versions.items())), "features": cfg.features.model_dump(mode="json"),
               "logic": LOGIC_VERSION}
    return digest(payload)


def _items_table(lakehouse: Lakehouse, version: int | None) -> DataFrame:
    if version is None:  # sources without an item file: categories come from the events
        return lakehouse.spark.createDataFrame([], BRONZE_ITEMS.schema)
    return lakehouse.read(BRONZE_ITEMS, version=version)


def _read_index(lakehouse: Lakehouse, spec: TableSpec) -> DataFrame:
    if lakehouse.exists(spec):
        return lakehouse.read(spec)
    return lakehouse.spark.createDataFrame([], spec.schema)


class _Run:
    """One build's lakehouse access, row counts and wall time per stage (for the benchmark)."""

    def __init__(self, lakehouse: Lakehouse) -> None:
        self.lakehouse = lakehouse
        self.rows: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def overwrite(self, spec: TableSpec, df: DataFrame) -> int:
        """Replace a table's content; returns (and records) the rows written."""
        self.lakehouse.overwrite(spec, df, job=JOB)
        n = self.lakehouse.last_operation_metrics(spec).get("numOutputRows", 0)
        self.rows[spec.qualified] = n
        return n

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._t, 3)
        self._t = now
        log.info("features: stage %s took %.1fs", stage, self.seconds[stage])


def _extend_indexes(lakehouse: Lakehouse, pairs: DataFrame, items: DataFrame) -> dict[str, int]:
    """MERGE the new ids of the three indexes; returns how many each gained."""
    catalogue = items.where(F.trim(F.col("category")) != "")
    candidates = [
        (USER_INDEX, first_seen(pairs.select(F.col("user_id").alias("id"), F.col("first_ts").alias("ts")))),
        (ITEM_INDEX, first_seen(pairs.select(F.col("item_id").alias("id"), F.col("first_ts").alias("ts")),
                               catalogue.select(F.col("item_id").alias("id"), F.col("updated_at").alias("ts")))),
        (CATEGORY_INDEX, first_seen(pairs.select(F.col("category").alias("id"), F.col("first_ts").alias("ts")),
                                   catalogue.select(F.col("category").alias("id"), F.col("updated_at").alias("ts")))),
    ]
    added = {}
    for spec, cand in candidates:
        id_col, idx_col = spec.columns
        rows = new_index_rows(cand, _read_index(lakehouse, spec), id_col, idx_col)
        metrics = lakehouse.merge(spec, rows, update=False, job=JOB)
        added[spec.name] = metrics.get("numTargetRowsInserted", 0)
    return added


def build_features(spark: SparkSession, lakehouse: Lakehouse, cfg: JobConfig, top_pairs: int = 10) -> FeaturesSummary:
    """Build (or skip, when inputs and config are unchanged) every silver table of the features job.

    Args:
        spark: the session (the one ``lakehouse`` uses).
        lakehouse: where bronze is read and silver / meta.job_log are written.
        cfg: the job config; only ``cfg.features`` shapes the output.
        top_pairs: how many category-transfer pairs the summary lists.
    """
    input_versions = lakehouse.versions(INPUTS)
    if BRONZE_EVENTS.qualified not in input_versions:
        lakehouse.read(BRONZE_EVENTS)  # raises TableNotFoundError naming the table and what to run
    with JobRun(lakehouse, JOB, run_key(input_versions, cfg)) as job_run:
        done = job_run.unchanged(outputs=lakehouse.versions(OUTPUTS))
        if done is not None:
            previous = FeaturesSummary.from_dict(done.summary)
            log.info("features: bronze versions and config unchanged since run %s; nothing to do", previous.run_id)
            return replace(previous, skipped=True, stage_seconds={})
        summary = _build(lakehouse, cfg, input_versions, job_run.run_id, top_pairs)
        job_run.record(input_versions, summary.output_versions, summary.to_dict())
    return summary


def _build(lakehouse: Lakehouse, cfg: JobConfig, input_versions: dict[str, int], run_id: str,
           top_pairs: int) -> FeaturesSummary:
    """Every stage from bronze at ``input_versions`` to the summary of run ``run_id``."""
    run = _Run(lakehouse)
    events = lakehouse.read(BRONZE_EVENTS, version=input_versions[BRONZE_EVENTS.qualified])
    items = _items_table(lakehouse, input_versions.get(BRONZE_ITEMS.qualified))
    resolved = resolve_categories(events, items)
    cutoffs = _cutoffs(cfg, resolved)
    all_pairs = assign_split(split_pairs(resolved, cutoffs), cutoffs).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = all_pairs.agg(F.sum("events").alias("events"), F.sum("unknown_events").alias("unknown"),
                               F.count("category").alias("pairs")).first()
        pairs = all_pairs.where(F.col("category").isNotNull())
        run.done("pairs")
        new_ids = _extend_indexes(lakehouse, pairs, items)
        run.done("indexes")
        _build_interactions(run, cfg, pairs, cutoffs, int(counts["pairs"]))
        _build_matrices(run)
        run.overwrite(ITEM_FEATURES, item_features(
            lakehouse.read(ITEM_INDEX), lakehouse.read(CATEGORY_INDEX), item_categories(pairs, items),
            item_text(items), lakehouse.read(INTERACTIONS)))
        run.done("item_features")
    finally:
        all_pairs.unpersist()
    _build_examples(run, cfg)
    return _summarise(run, cfg, run_id, input_versions, cutoffs, new_ids, counts, top_pairs)


def _cutoffs(cfg: JobConfig, resolved: DataFrame) -> Cutoffs:
    """The configured dates, else the fraction cutoffs over the pairs' first event days."""
    split = cfg.features.split
    return (resolve_cutoffs_config(split)
            or Cutoffs.from_row(fraction_cutoffs(pair_first_times(resolved), split.valid_fraction,
                                                 split.test_fraction).first()))


def _build_interactions(run: _Run, cfg: JobConfig, pairs: DataFrame, cutoffs: Cutoffs, n_pairs: int) -> None:
    """Write silver.interactions; checks that every pair got its ids."""
    fcfg, lakehouse = cfg.features, run.lakehouse
    indexed = index_pairs(pairs, *(lakehouse.read(s) for s in (USER_INDEX, ITEM_INDEX, CATEGORY_INDEX)))
    labelled = label_and_weight(indexed, fcfg.positive_min_value, fcfg.recency_half_life_days, cutoffs.valid_start_s)
    written = run.overwrite(INTERACTIONS, assign_slices(labelled))
    if written != n_pairs:
        raise RuntimeError(f"silver.interactions: wrote {written} rows for {n_pairs} (user, item) pairs: an id "
                           "is missing from an index; rebuild the indexes from bronze (delete the "
                           "silver.*_index tables) and re-run")
    run.done("interactions")


def _build_matrices(run: _Run) -> None:
    run.overwrite(USER_CATEGORY_AFFINITY, user_category_affinity(run.lakehouse.read(INTERACTIONS)))
    run.overwrite(CATEGORY_TRANSFER, category_transfer(run.lakehouse.read(USER_CATEGORY_AFFINITY)))
    run.done("matrices")


def _build_examples(run: _Run, cfg: JobConfig) -> None:
    """Write silver.user_history and silver.training_examples."""
    fcfg, lakehouse = cfg.features, run.lakehouse
    positives = train_positives(lakehouse.read(INTERACTIONS))
    run.overwrite(USER_HISTORY, user_history(positives, lakehouse.read(USER_INDEX), fcfg.history_length))
    run.done("user_history")
    pools = sampling_pools(lakehouse.read(ITEM_FEATURES), fcfg.negatives) if fcfg.negatives.per_positive else None
    run.overwrite(TRAINING_EXAMPLES, training_examples(positives, pools, lakehouse.read(USER_CATEGORY_AFFINITY), fcfg))
    run.done("training_examples")


def _summarise(run: _Run, cfg: JobConfig, run_id: str, input_versions: dict[str, int], cutoffs: Cutoffs,
               new_ids: dict[str, int], counts: Row, top_pairs: int) -> FeaturesSummary:
    lakehouse = run.lakehouse
    indexes = (USER_INDEX, ITEM_INDEX, CATEGORY_INDEX)
    run.rows.update(zip((s.qualified for s in indexes), each_table(indexes, lambda s: lakehouse.read(s).count())))
    row_counts = {spec.qualified: run.rows[spec.qualified] for spec in OUTPUTS}
    n_positives = lakehouse.read(INTERACTIONS).where((F.col("split") == TRAIN) & (F.col("label") == 1)).count()
    negatives = row_counts[TRAINING_EXAMPLES.qualified] - n_positives
    items_without_category = row_counts[ITEM_INDEX.qualified] - row_counts[ITEM_FEATURES.qualified]
    if items_without_category:
        log.warning("features: %d indexed items have no category in bronze any more; they are left out of "
                    "silver.item_features", items_without_category)
    top = [TransferPair(str(r["src_category"]), str(r["dst_category"]), int(r["users_both"]),
                        float(r["p_dst_given_src"]), float(r["lift"]), float(r["score"]))
           for r in top_transfer_pairs(lakehouse.read(CATEGORY_TRANSFER), lakehouse.read(CATEGORY_INDEX),
                                       top_pairs).collect()]
    output_versions = lakehouse.versions(OUTPUTS)
    run.done("summary")
    return FeaturesSummary(
        run_id=run_id, skipped=False, row_counts=row_counts, top_transfer=top,
        input_versions=input_versions, output_versions=output_versions,
        valid_start=cutoffs.valid_start.isoformat(), test_start=cutoffs.test_start.isoformat(),
        new_ids=new_ids, events_read=int(counts["events"] or 0), unknown_category_events=int(counts["unknown"] or 0),
        items_without_category=items_without_category, train_positives=n_positives,
        empty_negative_slots=n_positives * cfg.features.negatives.per_positive - negatives,
        stage_seconds=run.seconds,
    )
