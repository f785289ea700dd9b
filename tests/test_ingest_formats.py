"""Ingest of each format (Parquet with typed columns, JSON lines by glob), of ISO 8601 timestamps, and
of items (a file with list-valued genres; or derived from events, the Ciao rule)."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from xrec_spark.ingest.readers import read_source
from xrec_spark.ingest.run import run_ingest
from xrec_spark.ingest.validate import classify_events
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE, Lakehouse


def classified(spark, cfg) -> list:
    """Read and validate the configured events (no table writes: that path is format-independent
    and covered by test_ingest.py); rows of ``classify_events`` as dicts."""
    source = cfg.ingest.events
    required = [c for c in source.columns.model_dump().values() if c]
    raw, _, _ = read_source(spark, source.path, source.format, source.csv, "ingest.events.path", required)
    rows = classify_events(raw, source, cfg.ingest, datetime.now(timezone.utc))
    # formatted by Spark in the session time zone (UTC), not by Python in the machine's
    rows = rows.withColumn("event_ts", F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss"))
    return [r.asDict() for r in rows.collect()]


def _accepted(rows) -> set[tuple]:
    return {(r["user_id"], r["item_id"], r["event_type"], r["event_ts"], r["value"])
            for r in rows if r["reason"] is None}


def _reasons(rows) -> dict[str, int]:
    return dict(Counter(r["reason"] for r in rows if r["reason"] is not None))


def test_parquet_typed_columns(spark, tmp_path):
    ms = 1_577_880_000_000  # 2020-01-01 12:00:00 UTC in milliseconds
    day = 86_400_000
    pq.write_table(pa.table({
        "uid": pa.array([1, 2, 3, None, 5, 6, 7, 8], pa.int64()),
        "iid": [" a ", "b", "c", "d", "e", "f", "g", "b"],
        "ts_ms": pa.array([ms, ms + day, ms, ms, ms, ms, 4_102_444_800_000, ms + 2 * day], pa.int64()),
        # from_pandas=False keeps NaN a NaN (pandas would store it as null)
        "score": pa.array([1.0, 2.0, math.nan, 3.0, math.inf, 0.5, 5.0, 2.0], pa.float64(), from_pandas=False),
    }), tmp_path / "events.parquet")
    cfg = make_config(tmp_path / "lakehouse", ingest={"events": {
        "path": str(tmp_path / "events.parquet"), "ts_unit": "millis", "default_event_type": "click",
        "columns": {"user_id": "uid", "item_id": "iid", "event_ts": "ts_ms", "value": "score"}}})
    rows = classified(spark, cfg)
    assert len(rows) == 8
    assert _reasons(rows) == {"missing id": 1, "timestamp out of range": 1, "value out of range": 3}
    assert _accepted(rows) == {("1", "a", "click", "2020-01-01 12:00:00", 1.0),
                               ("2", "b", "click", "2020-01-02 12:00:00", 2.0),
                               ("8", "b", "click", "2020-01-03 12:00:00", 2.0)}
    nan_row = next(r for r in rows if r["item_id"] == "c")
    assert nan_row["reason"] == "value out of range"
    assert json.loads(nan_row["raw"]) == {"uid": 3, "iid": "c", "ts_ms": ms, "score": "NaN"}  # typed source row


JSON_A = [
    {"user": "\u00fc1", "item": "x1", "ts": 1577880000, "type": "purchase", "v": 3},
    {"user": "u2", "item": "x2", "ts": "2020-01-02T10:00:00", "type": "cart", "v": "abc"},
    "{not json",
    {"user": "u3", "item": "x3", "ts": "2020-01-03T10:00:00", "type": "refund", "v": 2},
    {"user": "u4", "item": "x4", "ts": "2020-01-04T10:00:00", "type": "VIEW"},
]
JSON_B = [
    {"user": "\u00fc1", "item": "x1", "ts": 1577880000, "type": "purchase", "v": 3},
    {"user": "u5", "item": "x5", "ts": "2020-01-05T10:00:00", "type": "click", "v": 1.5},
    {"user": "u6", "item": " ", "ts": "2020-01-06T10:00:00", "type": "click", "v": 1},
]


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")


def test_json_lines_by_glob(spark, tmp_path):
    _jsonl(tmp_path / "a.jsonl", JSON_A)
    _jsonl(tmp_path / "b.jsonl", JSON_B)
    cfg = make_config(tmp_path / "lakehouse", ingest={"events": {
        "path": str(tmp_path / "*.jsonl"), "ts_format": "yyyy-MM-dd'T'HH:mm:ss",
        "columns": {"user_id": "user", "item_id": "item", "event_ts": "ts", "value": "v", "event_type": "type"}}})
    rows = classified(spark, cfg)
    assert len(rows) == 8
    assert _reasons(rows) == {"malformed line": 1, "missing id": 1, "value out of range": 1,
                              "unknown event type": 1, "duplicate within batch": 1}
    assert _accepted(rows) == {("\u00fc1", "x1", "purchase", "2020-01-01 12:00:00", 3.0),
                               ("u4", "x4", "view", "2020-01-04 10:00:00", None),
                               ("u5", "x5", "click", "2020-01-05 10:00:00", 1.5)}
    by_reason = {r["reason"]: r for r in rows}
    # the first copy (file order a < b) is kept, the second quarantined
    assert by_reason["duplicate within batch"]["source"].endswith("/b.jsonl")
    assert by_reason[None]["source"].endswith(".jsonl")
    assert next(r for r in rows if r["user_id"] == "\u00fc1" and r["reason"] is None)["source"].endswith("/a.jsonl")
    assert by_reason["malformed line"]["raw"] == "{not json"


ITEM_COLUMNS = {"item_id": "item_id", "category": "genres", "title": "title", "text": None, "price": "price"}


def _items_file(path, toy_story_title: str):
    pd.DataFrame({
        "item_id": ["Toy Story (1995)", "Heat (1995)", "Heat (1995)", None, "Nameless", "Odd"],
        "title": [toy_story_title, "Heat (1995)", "Heat again", "x", "Nameless", "Odd"],
        "genres": [["Animation", "Children's", "Comedy"], ["Action", "Crime", "Thriller"], ["Drama"], ["Drama"],
                   [], ["Comedy"]],
        "price": [9.99, None, 1.0, 1.0, 3.0, -1.0],
    }).to_parquet(path)


def test_items_file_with_genre_lists_latest_wins(spark, tmp_path):
    pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["Toy Story (1995)", "Heat (1995)"],
                  "event_ts": pd.to_datetime(["2001-01-01", "2001-01-02"], utc=True), "rating": [5.0, 3.0]}
                 ).to_parquet(tmp_path / "ratings.parquet", coerce_timestamps="us")
    _items_file(tmp_path / "items.parquet", "Toy Story (1995)")
    ingest = {"events": {"path": str(tmp_path / "ratings.parquet"), "columns": {"category": None}},
              "items": {"path": str(tmp_path / "items.parquet"), "columns": ITEM_COLUMNS}}
    cfg = make_config(tmp_path / "lakehouse", ingest=ingest)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    first = run_ingest(spark, lakehouse, cfg)
    assert (first.item_rows_read, first.accepted_items, first.upserted_items) == (6, 3, 3)
    assert first.quarantined == {"missing id": 1, "value out of range": 1, "duplicate within batch": 1}
    items = {r["item_id"]: r for r in lakehouse.read(BRONZE_ITEMS).collect()}
    assert {k: (r["category"], r["text"], r["price"]) for k, r in items.items()} == {
        "Toy Story (1995)": ("Animation", "Toy Story (1995) Animation Children's Comedy", 9.99),
        "Heat (1995)": ("Action", "Heat (1995) Action Crime Thriller", None),
        "Nameless": (None, "Nameless", 3.0),
    }
    version = lakehouse.version(BRONZE_ITEMS)

    # Only the changed item is rewritten; unchanged ones keep their updated_at. Skipping unchanged
    # items is also what makes a re-ingest commit nothing (test_ingest.py::test_reingest_adds_nothing).
    _items_file(tmp_path / "items.parquet", "Toy Story")
    changed = run_ingest(spark, lakehouse, cfg)
    assert (changed.upserted_items, changed.new_quarantine_rows) == (1, 0)
    assert lakehouse.version(BRONZE_ITEMS) == version + 1
    after = {r["item_id"]: r for r in lakehouse.read(BRONZE_ITEMS).collect()}
    assert after["Toy Story (1995)"]["title"] == "Toy Story"
    assert after["Toy Story (1995)"]["updated_at"] > items["Toy Story (1995)"]["updated_at"]
    assert after["Heat (1995)"]["updated_at"] == items["Heat (1995)"]["updated_at"]
    assert len(after) == 3


def _ratings(path, users: list[str], items: list[str], days: list[str]) -> None:
    pd.DataFrame({"user_id": users, "item_id": items, "event_ts": pd.to_datetime(days, utc=True),
                  "rating": [4.0] * len(users)}).to_parquet(path, coerce_timestamps="us")


def test_skipped_item_file_is_not_replaced_by_items_derived_from_new_events(spark, tmp_path):
    """New events next to an unchanged (skipped) item file leave bronze.items as the file made it."""
    folder = tmp_path / "events"
    folder.mkdir()
    _ratings(folder / "a.parquet", ["u1", "u2"], ["Toy Story (1995)", "Heat (1995)"], ["2001-01-01", "2001-01-02"])
    _items_file(tmp_path / "items.parquet", "Toy Story (1995)")
    cfg = make_config(tmp_path / "lakehouse", ingest={
        "events": {"path": str(folder), "columns": {"category": None}},
        "items": {"path": str(tmp_path / "items.parquet"), "columns": ITEM_COLUMNS}})
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    run_ingest(spark, lakehouse, cfg)
    version, items = lakehouse.version(BRONZE_ITEMS), sorted(lakehouse.read(BRONZE_ITEMS).collect())
    _ratings(folder / "b.parquet", ["u3"], ["Heat (1995)"], ["2001-01-03"])
    second = run_ingest(spark, lakehouse, cfg)
    assert (second.inserted_events, second.item_rows_read, second.upserted_items) == (1, 0, 0)
    assert any(f.endswith("/items.parquet") for f in second.skipped_files)
    assert lakehouse.version(BRONZE_ITEMS) == version
    assert sorted(lakehouse.read(BRONZE_ITEMS).collect()) == items


def test_items_derived_from_all_events_of_touched_items(spark, tmp_path):
    header = "user_id,item_id,event_ts,rating,category\n"
    (tmp_path / "batch1.csv").write_text(header + "\n".join([
        "u1,A,2020-01-01 00:00:00,5,c1", "u2,A,2020-01-02 00:00:00,5,c1", "u3,A,2020-01-03 00:00:00,5,c2",
        "u1,B,2020-01-01 00:00:00,4,c1", "u2,B,2020-01-05 00:00:00,4,c2",   # tie -> latest: c2
        "u1,C,2020-01-01 00:00:00,3,c4", "u2,C,2020-01-01 00:00:00,3,c3",   # tie, same time -> c3
        "u1,D,2020-01-01 00:00:00,3,",
    ]) + "\n")
    (tmp_path / "batch2.csv").write_text(header + "u3,B,2020-02-01 00:00:00,4,c1\nu4,B,2020-02-02 00:00:00,4,c1\n")
    ingest = {"events": {"path": str(tmp_path / "batch1.csv"), "columns": {"category": "category"}}}
    cfg = make_config(tmp_path / "lakehouse", ingest=ingest)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)

    def categories():
        return {r["item_id"]: r["category"] for r in lakehouse.read(BRONZE_ITEMS).collect()}

    first = run_ingest(spark, lakehouse, cfg)
    assert (first.accepted_items, first.upserted_items) == (4, 4)
    assert categories() == {"A": "c1", "B": "c2", "C": "c3", "D": None}
    second = run_ingest(spark, lakehouse, cfg.with_overrides([f"ingest.events.path={tmp_path / 'batch2.csv'}"]))
    # B now has 3 events under c1 and 1 under c2 (counted over all of bronze.events)
    assert (second.accepted_items, second.upserted_items) == (1, 1)
    assert categories() == {"A": "c1", "B": "c1", "C": "c3", "D": None}
    assert lakehouse.read(BRONZE_EVENTS).where(F.col("item_id") == "B").select("category").distinct().count() == 2


@pytest.mark.parametrize(("columns", "message"), [
    ({"image_vector": "title"}, r"column 'title' mapped to image_vector has type string"),
])
def test_item_column_type_errors_name_the_column(spark, tmp_path, columns, message):
    _items_file(tmp_path / "items.parquet", "Toy Story (1995)")
    pd.DataFrame({"user_id": ["u1"], "item_id": ["Heat (1995)"], "event_ts": pd.to_datetime(["2001-01-01"], utc=True),
                  "rating": [3.0]}).to_parquet(tmp_path / "ratings.parquet", coerce_timestamps="us")
    cfg = make_config(tmp_path / "lakehouse", ingest={
        "events": {"path": str(tmp_path / "ratings.parquet"), "columns": {"category": None}},
        "items": {"path": str(tmp_path / "items.parquet"), "columns": {**ITEM_COLUMNS, **columns}}})
    with pytest.raises(TypeError, match=message):
        run_ingest(spark, Lakehouse(spark, cfg.lakehouse.root), cfg)
    assert not (tmp_path / "lakehouse").exists()


# ISO 8601 texts and the UTC instant each must be stored as, in epoch microseconds (by hand:
# 2010-01-01T00:00:00Z = 1_262_304_000 s). ts_format is set to something else, so these are
# read as ISO 8601 only.
DAY0 = 1_262_304_000
ISO_FORMS = {
    "z": ("2010-01-01T00:00:00Z", DAY0 * 10**6),
    "plus offset": ("2010-01-01T02:30:00+02:00", (DAY0 + 1_800) * 10**6),          # 00:30Z
    "minus offset": ("2010-01-01T00:00:00-05:30", (DAY0 + 19_800) * 10**6),        # 05:30Z
    "compact offset": ("2010-01-01T08:00:00+0100", (DAY0 + 25_200) * 10**6),       # 07:00Z
    "fraction": ("2010-01-01T00:00:00.25Z", DAY0 * 10**6 + 250_000),
    "nanos cut to micros": ("2010-01-01T12:00:00.123456789+01:00", (DAY0 + 39_600) * 10**6 + 123_456),
    "date only": ("2010-01-02", (DAY0 + 86_400) * 10**6),
    "no seconds": ("2010-01-01T10:15Z", (DAY0 + 36_900) * 10**6),
    "no zone is utc": ("2010-01-01T10:00:00", (DAY0 + 36_000) * 10**6),
    "space and lower case z": ("2010-01-01 10:00:00z", (DAY0 + 36_000) * 10**6),
    "configured ts_format": ("02/01/2010 10:00", (DAY0 + 86_400 + 36_000) * 10**6),  # dd/MM/yyyy HH:mm
    "epoch seconds": (str(DAY0), DAY0 * 10**6),
}
NOT_TIMESTAMPS = {"time only": "10:00:00", "impossible date": "2010-02-30T00:00:00Z",
                  "hour 25": "2010-01-01T25:00:00Z", "one-digit month": "2010-1-01",
                  "offset without two-digit hour": "2010-01-01T00:00:00+2:00", "words": "yesterday",
                  "date only for a format with time": "02/01/2010"}


def test_iso_8601_timestamps_are_stored_in_utc(spark, tmp_path):
    forms = {**{k: v for k, (v, _) in ISO_FORMS.items()}, **NOT_TIMESTAMPS}
    _jsonl(tmp_path / "iso.jsonl", [{"user": name, "item": "x", "ts": text} for name, text in forms.items()])
    cfg = make_config(tmp_path / "lakehouse", ingest={"events": {
        "path": str(tmp_path / "iso.jsonl"), "ts_format": "dd/MM/yyyy HH:mm",
        "columns": {"user_id": "user", "item_id": "item", "event_ts": "ts", "value": None}}})
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    summary = run_ingest(spark, lakehouse, cfg)
    assert summary.quarantined == {"unparseable timestamp": len(NOT_TIMESTAMPS)}
    stored = {r["user_id"]: r["micros"] for r in
              lakehouse.read(BRONZE_EVENTS).select("user_id", F.unix_micros("event_ts").alias("micros")).collect()}
    assert stored == {name: micros for name, (_, micros) in ISO_FORMS.items()}
    rejected = {json.loads(r["raw"])["user"]: r["reason"] for r in lakehouse.read(BRONZE_QUARANTINE).collect()}
    assert rejected == {name: "unparseable timestamp" for name in NOT_TIMESTAMPS}
