"""Features on the Ciao sample through ingest: run, append, re-run; the acceptance checks.

The sample (13,096 rows, 368 users) is ingested in two batches split by time (before / from
2009-01-01), the features job runs after each, then once more through ``xrec features`` on the
unchanged bronze.
"""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F

from conftest import CIAO_SAMPLE, TEST_SPARK, make_config
from test_features import assert_same_rows
from xrec_spark.features.build import OUTPUTS, build_features
from xrec_spark.ingest.run import run_ingest
from xrec_spark.tables import (
    CATEGORY_INDEX, INTERACTIONS, ITEM_FEATURES, ITEM_INDEX, JOB_LOG, TRAINING_EXAMPLES, USER_HISTORY, USER_INDEX,
    Lakehouse,
)

CIAO_INGEST = {
    "events": {"path": None, "format": "parquet",
               "columns": {"user_id": "user_id", "item_id": "item_id", "event_ts": "event_ts", "value": "rating",
                           "category": "category_id"},
               "default_event_type": "rating"},
    "items": None, "value_min": 1, "value_max": 5,
}
INDEXES = ((USER_INDEX, "user_id", "user_idx"), (ITEM_INDEX, "item_id", "item_idx"),
           (CATEGORY_INDEX, "category", "category_idx"))


def _ingest_config(path, root) -> dict:
    return {**CIAO_INGEST, "events": {**CIAO_INGEST["events"], "path": str(path)}}


def _indexes(lakehouse: Lakehouse) -> dict[str, dict[str, int]]:
    return {spec.name: {r[k]: r[v] for r in lakehouse.read(spec).collect()} for spec, k, v in INDEXES}


def _check_index_extension(before: dict[str, int], after: dict[str, int]) -> None:
    """Old ids keep their numbers, new ids follow the old maximum, numbers stay dense from 1."""
    assert {k: after[k] for k in before} == before
    new = sorted(v for k, v in after.items() if k not in before)
    assert new == list(range(len(before) + 1, len(after) + 1))
    assert sorted(after.values()) == list(range(1, len(after) + 1))


@pytest.mark.slow
def test_ciao_sample_run_append_rerun(spark, tmp_path, capsys):
    from jobs import build_features as job

    raw = pd.read_parquet(CIAO_SAMPLE)
    cut = pd.Timestamp("2009-01-01", tz="UTC")
    batches = [tmp_path / "batch1.parquet", tmp_path / "batch2.parquet"]
    raw[raw["event_ts"] < cut].to_parquet(batches[0])
    raw[raw["event_ts"] >= cut].to_parquet(batches[1])
    root = tmp_path / "lakehouse"
    lakehouse = Lakehouse(spark, str(root))

    cfg = make_config(root, ingest=_ingest_config(batches[0], root))
    run_ingest(spark, lakehouse, cfg)
    first = build_features(spark, lakehouse, cfg)
    indexes_first = _indexes(lakehouse)
    early = raw[(raw["event_ts"] < cut) & raw["rating"].between(1, 5)]
    assert not first.skipped and first.row_counts["silver.user_index"] == early["user_id"].nunique()

    cfg = make_config(root, ingest=_ingest_config(batches[1], root))
    run_ingest(spark, lakehouse, cfg)
    second = build_features(spark, lakehouse, cfg)
    indexes = _indexes(lakehouse)
    for name in indexes:
        _check_index_extension(indexes_first[name], indexes[name])
    # Ingest quarantines the 4 rating-0 rows (3 items occur nowhere else).
    kept = raw[raw["rating"].between(1, 5)]
    assert len(indexes["user_index"]) == kept["user_id"].nunique() == 368
    assert len(indexes["item_index"]) == kept["item_id"].nunique()
    assert len(indexes["category_index"]) == 28
    assert second.input_versions != first.input_versions

    interactions = lakehouse.read(INTERACTIONS)
    # Every (user, item) pair of the sample once.
    assert second.row_counts["silver.interactions"] == len(kept.drop_duplicates(["user_id", "item_id"]))
    assert second.row_counts["silver.item_features"] == len(indexes["item_index"])
    assert second.row_counts["silver.user_history"] == 368

    # Acceptance: no negative is a train positive of its user, over the whole sample.
    examples = lakehouse.read(TRAINING_EXAMPLES)
    train_pos = interactions.where((F.col("split") == "train") & (F.col("label") == 1))
    negatives = examples.where(F.col("label") == 0)
    assert negatives.count() > 3 * train_pos.count()
    assert negatives.join(train_pos, ["user_idx", "item_idx"], "left_semi").count() == 0
    assert_same_rows(examples.where(F.col("label") == 1).select("user_idx", "item_idx", "category_idx"),
                     train_pos.select("user_idx", "item_idx", "category_idx"))
    # Negatives are train items, labelled with their own primary category.
    items = lakehouse.read(ITEM_FEATURES)
    joined = negatives.join(items.select("item_idx", F.col("category_idx").alias("item_cat"), "train_count"), "item_idx")
    assert joined.count() == negatives.count()
    assert joined.where((F.col("item_cat") != F.col("category_idx")) | (F.col("train_count") == 0)).count() == 0

    # No leakage: every history item of a positive is a train positive of that user, strictly earlier.
    pos = (examples.where(F.col("label") == 1).join(train_pos.select("user_idx", "item_idx", "ts"),
                                                    ["user_idx", "item_idx"])
           .select("user_idx", "ts", F.explode("history").alias("h")).where(F.col("h") != 0))
    hist = pos.join(train_pos.select("user_idx", F.col("item_idx").alias("h"), F.col("ts").alias("h_ts")),
                    ["user_idx", "h"], "left")
    assert hist.count() > 10_000
    assert hist.where(F.col("h_ts").isNull() | (F.col("h_ts") >= F.col("ts"))).count() == 0
    lengths = lakehouse.read(USER_HISTORY).select(F.size("history").alias("n")).distinct().collect()
    assert [r["n"] for r in lengths] == [cfg.features.history_length]

    # Re-run on unchanged bronze through the job: skipped, nothing committed, counts printed.
    versions = lakehouse.versions(OUTPUTS)
    config = tmp_path / "features.yaml"
    config.write_text(yaml.safe_dump({"spark": TEST_SPARK, "lakehouse": {"root": str(root)}}))
    capsys.readouterr()
    assert job.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"features: inputs unchanged since run {second.run_id}" in out
    assert f"{'silver.training_examples':<32} {second.row_counts['silver.training_examples']:>12,}" in out
    assert "top transfer pairs" in out
    assert lakehouse.versions(OUTPUTS) == versions
    assert lakehouse.read(JOB_LOG).where("job = 'features'").count() == 2
    assert _indexes(lakehouse) == indexes
