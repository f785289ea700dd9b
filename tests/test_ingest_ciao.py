"""Ciao through the ingest job, checked against a hand count made independently with pandas."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from pyspark.sql import functions as F

from conftest import CIAO_FULL, CIAO_SAMPLE, TEST_SPARK, make_config
from xrec_spark.ingest.run import run_ingest
from xrec_spark.tables import ALL_TABLES, BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE, Lakehouse

CIAO_EVENTS = {"path": None, "format": "parquet",
               "columns": {"user_id": "user_id", "item_id": "item_id", "event_ts": "event_ts", "value": "rating",
                           "category": "category_id"},
               "default_event_type": "rating"}


def pandas_hand_count(path) -> tuple[dict[str, int], pd.DataFrame]:
    """The README's rules, applied with pandas: ratings outside [1, 5] are out of range; among
    the rest, rows equal in every field bronze keeps are duplicates (first kept)."""
    df = pd.read_parquet(path)
    out_of_range = ~df["rating"].between(1, 5)
    kept = df[~out_of_range]
    duplicate = kept.duplicated(["user_id", "item_id", "event_ts", "rating", "category_id"], keep="first")
    counts = {"value out of range": int(out_of_range.sum()), "duplicate within batch": int(duplicate.sum())}
    return {k: v for k, v in counts.items() if v}, kept[~duplicate]


def pandas_item_categories(accepted: pd.DataFrame) -> dict[str, str]:
    """Each item's category: most events, ties -> latest event, then smallest name."""
    g = (accepted.assign(category=accepted["category_id"].astype(str))
         .groupby(["item_id", "category"]).agg(n=("rating", "size"), last=("event_ts", "max")).reset_index())
    g = g.sort_values(["item_id", "n", "last", "category"], ascending=[True, False, False, True])
    first = g.drop_duplicates("item_id")
    return dict(zip(first["item_id"].astype(str), first["category"]))


def _write_config(path, lakehouse_root, events_path) -> None:
    path.write_text(yaml.safe_dump({
        "spark": TEST_SPARK, "lakehouse": {"root": str(lakehouse_root)},
        "ingest": {"events": {**CIAO_EVENTS, "path": str(events_path)}, "items": None, "value_min": 1, "value_max": 5},
    }))


@pytest.mark.slow
def test_ciao_sample_through_the_job_then_the_demo(spark, tmp_path, capsys):
    from jobs import demo, ingest

    expected, accepted = pandas_hand_count(CIAO_SAMPLE)
    assert expected == {"value out of range": 4, "duplicate within batch": 22}  # pins the hand count itself
    config = tmp_path / "ciao.yaml"
    _write_config(config, tmp_path / "lakehouse", CIAO_SAMPLE)

    assert ingest.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"accepted: {len(accepted)} events ({len(accepted)} new in bronze.events)" in out
    assert "value out of range: 4" in out and "duplicate within batch: 22" in out

    lakehouse = Lakehouse(spark, str(tmp_path / "lakehouse"))
    reasons = {r["reason"]: r["count"] for r in lakehouse.read(BRONZE_QUARANTINE).groupBy("reason").count().collect()}
    assert reasons == expected
    assert lakehouse.read(BRONZE_EVENTS).count() == len(accepted)
    items = {r["item_id"]: r["category"] for r in lakehouse.read(BRONZE_ITEMS).collect()}
    assert items == pandas_item_categories(accepted)
    versions = lakehouse.versions(ALL_TABLES)

    # The demo's ingest stage re-ingests the same file: skipped as unchanged, nothing new.
    assert demo.main(["--config", str(config), "--until", "ingest"]) == 0
    out = capsys.readouterr().out
    assert "(0 new in bronze.events)" in out and "(0 new in bronze.quarantine)" in out
    assert "skipped 1 unchanged file(s)" in out and "sample.parquet" in out
    assert "bronze.events" in out and str(tmp_path / "lakehouse") in out and "what to look at next" in out
    after = lakehouse.versions(ALL_TABLES)
    assert {k: v for k, v in after.items() if k.startswith("bronze.")} == \
        {k: v for k, v in versions.items() if k.startswith("bronze.")}


@pytest.mark.slow
def test_full_ciao_twice_matches_pandas_and_adds_nothing(spark, tmp_path):
    expected, accepted = pandas_hand_count(CIAO_FULL)
    cfg = make_config(tmp_path / "lakehouse", ingest={"events": {**CIAO_EVENTS, "path": str(CIAO_FULL)}})
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    first = run_ingest(spark, lakehouse, cfg)
    assert first.rows_read == 284_086
    assert first.quarantined == expected == {"value out of range": 34, "duplicate within batch": 290}
    assert first.inserted_events == first.accepted_events == len(accepted)
    assert first.accepted_items == accepted["item_id"].nunique() == 105_096  # 18 items have only rating-0 rows
    versions = lakehouse.versions([BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE])

    skipped = run_ingest(spark, lakehouse, cfg)
    assert (skipped.rows_read, skipped.files, len(skipped.skipped_files)) == (0, [], 1)
    # Read again all the same: the MERGEs add nothing.
    second = run_ingest(spark, lakehouse, cfg.with_overrides(["ingest.skip_unchanged=false"]))
    assert (second.inserted_events, second.new_quarantine_rows, second.upserted_items) == (0, 0, 0)
    assert second.quarantined == expected
    assert lakehouse.versions([BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE]) == versions
    assert lakehouse.read(BRONZE_EVENTS).count() == len(accepted)
    assert lakehouse.read(BRONZE_QUARANTINE).count() == sum(expected.values())
    # every rating-0 row is in quarantine under its reason
    zero = lakehouse.read(BRONZE_QUARANTINE).where(F.get_json_object("raw", "$.rating") == "0.0")
    assert zero.where(F.col("reason") == "value out of range").count() == 34
