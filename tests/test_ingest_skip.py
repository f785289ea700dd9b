"""Skipping unchanged input: a second ingest of the same files reads none of them; a touched, a
rewritten (same size and time) or a new file is read; other rules read everything again; a
failed run leaves meta.ingested_files as it was."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from xrec_spark.ingest.readers import SourceReadError
from xrec_spark.ingest.run import run_ingest
from xrec_spark.tables import ALL_TABLES, BRONZE_EVENTS, INGESTED_FILES, JOB_LOG, Lakehouse

HEADER = "user_id,item_id,event_ts,rating,category\n"
A = HEADER + "u1,i1,2020-01-01 10:00:00,5,books\nu2,i2,2020-01-02 10:00:00,4,books\n"
B = HEADER + "u3,i3,2020-01-03 10:00:00,3,music\nu4,i4,2020-01-04 10:00:00,2,music\nu5,i5,2020-01-05 10:00:00,9,music\n"
COLUMNS = {"user_id": "user_id", "item_id": "item_id", "event_ts": "event_ts", "value": "rating",
           "category": "category"}


def _names(uris: list[str]) -> list[str]:
    return [u.rsplit("/", 1)[-1] for u in uris]


def _mtime_ms(path) -> int:
    return os.stat(path).st_mtime_ns // 1_000_000


@pytest.fixture
def landed(spark, tmp_path):
    """A folder of two CSV files (5 rows, one out of range), ingested once:
    (cfg, lakehouse, folder, first run's summary)."""
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "a.csv").write_text(A)
    (folder / "b.csv").write_text(B)
    cfg = make_config(tmp_path / "lakehouse", ingest={"events": {"path": str(folder), "columns": COLUMNS}})
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    first = run_ingest(spark, lakehouse, cfg, run_id="first")
    return cfg, lakehouse, folder, first


def _without_job_log(versions: dict[str, int]) -> dict[str, int]:
    return {t: v for t, v in versions.items() if t != JOB_LOG.qualified}


def test_manifest_records_each_file_read(landed):
    _, lakehouse, folder, first = landed
    assert _names(first.files) == ["a.csv", "b.csv"] and first.skipped_files == []
    assert (first.rows_read, first.inserted_events, first.quarantined) == (5, 4, {"value out of range": 1})
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in lakehouse.read(INGESTED_FILES).collect()}
    assert set(rows) == {"a.csv", "b.csv"}
    for name, row in rows.items():
        assert (row["source"], row["size"], row["modified_ms"], row["run_id"]) == \
            ("events", os.stat(folder / name).st_size, _mtime_ms(folder / name), "first")
        assert len(row["fingerprint"]) == 64 and len(row["rules_hash"]) == 64


def test_second_ingest_of_the_same_files_reads_none(spark, landed):
    cfg, lakehouse, _, first = landed
    before = lakehouse.versions(ALL_TABLES)
    second = run_ingest(spark, lakehouse, cfg, run_id="second")
    assert second.files == [] and second.skipped_files == first.files
    assert (second.rows_read, second.accepted_events, second.inserted_events, second.quarantined) == (0, 0, 0, {})
    assert "skipped 2 unchanged file(s)" in "\n".join(second.lines())
    assert _without_job_log(lakehouse.versions(ALL_TABLES)) == _without_job_log(before)
    logged = lakehouse.read(JOB_LOG).where(F.col("run_id") == "second").select("summary").first()
    assert '"skipped_files": [' in logged["summary"] and "b.csv" in logged["summary"]


def test_touched_file_is_read_again(spark, landed):
    cfg, lakehouse, folder, _ = landed
    stat = os.stat(folder / "b.csv")
    os.utime(folder / "b.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    again = run_ingest(spark, lakehouse, cfg, run_id="touched")
    assert _names(again.files) == ["b.csv"] and _names(again.skipped_files) == ["a.csv"]
    # The same rows as before: read, and nothing added.
    assert (again.rows_read, again.inserted_events, again.new_quarantine_rows) == (3, 0, 0)
    assert again.quarantined == {"value out of range": 1}
    row = lakehouse.read(INGESTED_FILES).where(F.col("file").endswith("/b.csv")).first()
    assert (row["modified_ms"], row["run_id"]) == (_mtime_ms(folder / "b.csv"), "touched")


def test_rewritten_file_with_same_size_and_time_is_read_again(spark, landed):
    """The fingerprint catches what size and time do not (a copy that kept the old mtime)."""
    cfg, lakehouse, folder, _ = landed
    stat = os.stat(folder / "a.csv")
    (folder / "a.csv").write_text(A.replace("u2,i2,2020-01-02 10:00:00,4", "u2,i2,2020-01-02 10:00:00,3"))
    os.utime(folder / "a.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(folder / "a.csv").st_size == stat.st_size
    again = run_ingest(spark, lakehouse, cfg, run_id="rewritten")
    assert _names(again.files) == ["a.csv"] and _names(again.skipped_files) == ["b.csv"]
    assert (again.rows_read, again.inserted_events) == (2, 1)  # u2's new rating is a new event
    ratings = {r["value"] for r in lakehouse.read(BRONZE_EVENTS).where(F.col("user_id") == "u2").collect()}
    assert ratings == {4.0, 3.0}


def test_new_file_next_to_ingested_ones_is_the_only_one_read(spark, landed):
    cfg, lakehouse, folder, _ = landed
    (folder / "c.csv").write_text(HEADER + "u6,i6,2020-01-06 10:00:00,1,toys\n")
    (folder / "d.csv").write_text(HEADER)  # header only: no rows, and no error next to the others
    again = run_ingest(spark, lakehouse, cfg, run_id="new")
    assert _names(again.files) == ["c.csv", "d.csv"] and _names(again.skipped_files) == ["a.csv", "b.csv"]
    assert (again.rows_read, again.inserted_events) == (1, 1)
    assert lakehouse.read(BRONZE_EVENTS).count() == 5


def test_other_rules_read_every_file_again(spark, landed):
    """value_max 10 accepts u5's rating 9, quarantined under the first run's rules."""
    cfg, lakehouse, _, first = landed
    again = run_ingest(spark, lakehouse, cfg.with_overrides(["ingest.value_max=10"]), run_id="rules")
    assert again.files == first.files and again.skipped_files == []
    assert (again.rows_read, again.inserted_events, again.quarantined) == (5, 1, {})
    hashes = {r["rules_hash"] for r in lakehouse.read(INGESTED_FILES).collect()}
    assert len(hashes) == 1 and lakehouse.read(INGESTED_FILES).where(F.col("run_id") == "rules").count() == 2


def test_failed_run_leaves_the_manifest_and_the_next_run_reads_the_file(spark, landed):
    cfg, lakehouse, folder, _ = landed
    (folder / "c.csv").write_bytes((HEADER + "u6,i6,2020-01-06 10:00:00,1,toys\n").encode("utf-16"))
    before = lakehouse.versions(ALL_TABLES)
    with pytest.raises(SourceReadError, match=r"c\.csv is not valid UTF-8"):
        run_ingest(spark, lakehouse, cfg, run_id="failed")
    assert lakehouse.versions(ALL_TABLES) == before
    (folder / "c.csv").write_text(HEADER + "u6,i6,2020-01-06 10:00:00,1,toys\n")
    again = run_ingest(spark, lakehouse, cfg, run_id="fixed")
    assert _names(again.files) == ["c.csv"] and again.inserted_events == 1


def test_deleted_bronze_reads_everything_again(spark, landed):
    """meta.ingested_files alone does not skip: a bronze folder deleted to start over is refilled."""
    import shutil

    cfg, lakehouse, _, first = landed
    shutil.rmtree(lakehouse.path(BRONZE_EVENTS))
    again = run_ingest(spark, lakehouse, cfg, run_id="refill")
    assert again.files == first.files and again.inserted_events == 4


def test_only_new_partition_folder_is_read_with_its_partition_column(spark, tmp_path):
    """A partitioned Parquet folder (category=<name>/): a partial read keeps the partition column."""
    root = tmp_path / "events"
    frame = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "rating": [4.0, 5.0],
                          "event_ts": pd.to_datetime(["2020-01-01", "2020-01-02"], utc=True)})
    for category, part in (("books", frame.iloc[:1]), ("music", frame.iloc[1:])):
        (root / f"category={category}").mkdir(parents=True)
        part.to_parquet(root / f"category={category}" / "part-0.parquet", index=False, coerce_timestamps="us")
    cfg = make_config(tmp_path / "lakehouse", ingest={"events": {"path": str(root), "columns": COLUMNS}})
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    assert run_ingest(spark, lakehouse, cfg).inserted_events == 2
    (root / "category=toys").mkdir()
    frame.iloc[:1].assign(user_id="u3").to_parquet(root / "category=toys" / "part-0.parquet", index=False,
                                                   coerce_timestamps="us")
    again = run_ingest(spark, lakehouse, cfg)
    assert len(again.files) == 1 and "category=toys" in again.files[0] and len(again.skipped_files) == 2
    rows = {(r["user_id"], r["category"]) for r in lakehouse.read(BRONZE_EVENTS).collect()}
    assert rows == {("u1", "books"), ("u2", "music"), ("u3", "toys")}
