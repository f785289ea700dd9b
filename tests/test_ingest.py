"""Ingest: the acceptance CSV (every quarantine reason), re-ingest (skipped as unchanged, or read
again and adding nothing), and sources that cannot be read leaving every table as it was."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from pyspark.sql import functions as F

from conftest import make_config
from xrec_spark.ingest.readers import SourceReadError
from xrec_spark.ingest.run import run_ingest
from xrec_spark.tables import ALL_TABLES, BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE, JOB_LOG, Lakehouse

HEADER = "user_id,item_id,event_ts,rating,event_type,category"
# 10 good rows: what bronze.events must hold afterwards (hand-computed).
GOOD = [
    ("u1,i1,2020-01-01 10:00:00,5,rating,books", ("u1", "i1", "rating", "2020-01-01 10:00:00", 5.0, "books")),
    ("u2,i2,2020-01-02 10:00:00,4,rating,books", ("u2", "i2", "rating", "2020-01-02 10:00:00", 4.0, "books")),
    ("u3,i3,2020-01-03 10:00:00,3,click,music", ("u3", "i3", "click", "2020-01-03 10:00:00", 3.0, "music")),
    ("u4,i4,2020-01-04 10:00:00,2,rating,music", ("u4", "i4", "rating", "2020-01-04 10:00:00", 2.0, "music")),
    ("u5,i5,2020-01-05 10:00:00,1,rating,", ("u5", "i5", "rating", "2020-01-05 10:00:00", 1.0, None)),
    # ids trimmed, event type lower-cased, unicode kept
    ("  u6 ,\u00efté6,2020-01-06 10:00:00,5, Rating ,toys", ("u6", "\u00efté6", "rating", "2020-01-06 10:00:00", 5.0, "toys")),
    # a plain number is epoch seconds (ts_unit)
    ("u7,i7,1600000000,4,rating,toys", ("u7", "i7", "rating", "2020-09-13 12:26:40", 4.0, "toys")),
    # no value is allowed (a view has no rating)
    ("u8,i8,2020-01-08 10:00:00,,view,toys", ("u8", "i8", "view", "2020-01-08 10:00:00", None, "toys")),
    ("u9,i9,2020-01-09 10:00:00,4.5,rating,books", ("u9", "i9", "rating", "2020-01-09 10:00:00", 4.5, "books")),
    # same user, item and time as u1's row but another rating: a distinct event
    ("u1,i1,2020-01-01 10:00:00,4,rating,books", ("u1", "i1", "rating", "2020-01-01 10:00:00", 4.0, "books")),
]
# 10 bad rows: one per reason, plus an impossible date and a row with an extra column.
BAD = [
    (",i11,2020-01-11 10:00:00,3,rating,books", "missing id"),
    ("u12,i12,last tuesday,3,rating,books", "unparseable timestamp"),
    ("u13,i13,2999-01-01 00:00:00,3,rating,books", "timestamp out of range"),
    ("u14,i14,1985-06-01 00:00:00,3,rating,books", "timestamp out of range"),
    ("u15,i15,2020-01-15 10:00:00,9,rating,books", "value out of range"),
    ("u16,i16,2020-01-16 10:00:00,3,like,books", "unknown event type"),
    ("u1,i1,2020-01-01 10:00:00,5,rating,books", "duplicate within batch"),
    ("u18,i18,2020-01-18 10:00:00,3,rating", "malformed line"),
    ("u19,i19,2020-02-30 10:00:00,3,rating,books", "unparseable timestamp"),
    ("u20,i20,2020-01-20 10:00:00,3,rating,books,extra", "malformed line"),
]
EVENT_COLUMNS = {"user_id": "user_id", "item_id": "item_id", "event_ts": "event_ts", "value": "rating",
                 "event_type": "event_type", "category": "category"}


def _ingest_section(path, **extra) -> dict:
    return {"events": {"path": str(path), "columns": EVENT_COLUMNS, **extra}}


@pytest.fixture(scope="module")
def acceptance(spark, tmp_path_factory):
    """The acceptance CSV ingested three times into a fresh lakehouse: then again (skipped as
    unchanged), then with skip_unchanged=false (read again)."""
    root = tmp_path_factory.mktemp("acceptance")
    csv = root / "events.csv"
    csv.write_text("\n".join([HEADER, *(line for line, _ in GOOD), *(line for line, _ in BAD)]) + "\n",
                   encoding="utf-8")
    cfg = make_config(root / "lakehouse", ingest=_ingest_section(csv))
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    first = run_ingest(spark, lakehouse, cfg, run_id="run-1")
    after_first = lakehouse.versions(ALL_TABLES)
    quarantine_first = sorted(tuple(r) for r in lakehouse.read(BRONZE_QUARANTINE).select("raw", "reason").collect())
    second = run_ingest(spark, lakehouse, cfg, run_id="run-2")
    after_second = lakehouse.versions(ALL_TABLES)
    forced = run_ingest(spark, lakehouse, cfg.with_overrides(["ingest.skip_unchanged=false"]), run_id="run-3")
    return SimpleNamespace(cfg=cfg, csv=csv, root=root, lakehouse=lakehouse, first=first, second=second,
                           forced=forced, after_first=after_first, after_second=after_second,
                           quarantine_first=quarantine_first)


def test_acceptance_csv_counts(acceptance):
    first = acceptance.first
    assert first.rows_read == 20
    assert first.accepted_events == 10
    assert first.inserted_events == 10
    assert first.new_quarantine_rows == 10
    assert first.quarantined == {"malformed line": 2, "missing id": 1, "unparseable timestamp": 2,
                                 "timestamp out of range": 2, "value out of range": 1,
                                 "unknown event type": 1, "duplicate within batch": 1}


def test_accepted_rows_are_normalised(spark, acceptance):
    got = acceptance.lakehouse.read(BRONZE_EVENTS).select(
        "user_id", "item_id", "event_type", F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss").alias("ts"),
        "value", "category")
    expected = spark.createDataFrame([row for _, row in GOOD], got.schema)
    assert got.count() == expected.count() == 10
    assert got.exceptAll(expected).count() == 0 and expected.exceptAll(got).count() == 0
    ids = acceptance.lakehouse.read(BRONZE_EVENTS).select("event_id", "source", "ingest_run_id").collect()
    assert len({r["event_id"] for r in ids}) == 10
    assert {r["ingest_run_id"] for r in ids} == {"run-1"}
    assert all(r["source"].endswith("/events.csv") for r in ids)


@pytest.mark.parametrize(("line", "reason"), BAD, ids=[f"{r}:{line.split(',')[0] or 'no user'}" for line, r in BAD])
def test_each_bad_row_gets_its_reason(acceptance, line, reason):
    rows = acceptance.lakehouse.read(BRONZE_QUARANTINE).collect()
    if reason == "malformed line":
        matches = [r for r in rows if r["raw"] == line]  # the line itself, as read
    else:
        values = dict(zip(HEADER.split(","), line.split(",")))
        wanted = {k: v for k, v in values.items() if v}
        matches = [r for r in rows if r["raw"].startswith("{") and json.loads(r["raw"]) == wanted]
    assert [r["reason"] for r in matches] == [reason]
    assert matches[0]["run_id"] == "run-1"
    assert matches[0]["source"].endswith("/events.csv")


def test_reingest_of_the_unchanged_file_reads_nothing(acceptance):
    second = acceptance.second
    assert len(acceptance.first.files) == 1 and acceptance.first.files[0].endswith("/events.csv")
    assert second.skipped_files == acceptance.first.files and second.files == []
    assert (second.rows_read, second.accepted_events, second.inserted_events, second.new_quarantine_rows,
            second.upserted_items, second.quarantined) == (0, 0, 0, 0, 0, {})
    assert any(line.startswith("  skipped 1 unchanged file(s)") and "events.csv" in line for line in second.lines())
    # Only meta.job_log got its row; bronze and the manifest are as the first run left them.
    changed = {t for t, v in acceptance.after_second.items() if acceptance.after_first.get(t) != v}
    assert changed == {JOB_LOG.qualified}


def test_forced_reingest_reads_again_and_adds_nothing(acceptance):
    forced, lakehouse = acceptance.forced, acceptance.lakehouse
    assert forced.files == acceptance.first.files and forced.skipped_files == []
    assert forced.inserted_events == 0
    assert forced.new_quarantine_rows == 0
    assert forced.upserted_items == 0
    assert forced.quarantined == acceptance.first.quarantined
    now = lakehouse.versions(ALL_TABLES)
    # The file's state is already in meta.ingested_files: nothing to record either.
    assert {t: v for t, v in now.items() if t != JOB_LOG.qualified} == \
        {t: v for t, v in acceptance.after_first.items() if t != JOB_LOG.qualified}
    assert lakehouse.read(BRONZE_EVENTS).count() == 10
    assert sorted(tuple(r) for r in lakehouse.read(BRONZE_QUARANTINE).select("raw", "reason").collect()) \
        == acceptance.quarantine_first


def test_job_log_records_each_run(acceptance):
    rows = {r["run_id"]: r for r in acceptance.lakehouse.read(JOB_LOG).collect()}
    assert set(rows) == {"run-1", "run-2", "run-3"}
    assert rows["run-1"]["run_key"] == rows["run-2"]["run_key"]  # same config, same file
    assert json.loads(rows["run-1"]["summary"])["inserted_events"] == 10
    second = json.loads(rows["run-2"]["summary"])
    assert (second["inserted_events"], second["files"], len(second["skipped_files"])) == (0, [], 1)
    assert rows["run-2"]["input_versions"]["bronze.events"] == rows["run-1"]["output_versions"]["bronze.events"]


def test_items_derived_from_events(acceptance):
    items = {r["item_id"]: r["category"] for r in acceptance.lakehouse.read(BRONZE_ITEMS).collect()}
    assert items == {"i1": "books", "i2": "books", "i3": "music", "i4": "music", "i5": None,
                     "\u00efté6": "toys", "i7": "toys", "i8": "toys", "i9": "books"}


def _write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


FAILURES = {
    "missing file": (lambda d: d / "nope.csv", {}, r"no input file at .*nope\.csv"),
    "glob matching nothing": (lambda d: d / "none-*.csv", {}, r"no input file at .*none-\*\.csv"),
    "empty file": (lambda d: _write_bytes(d / "empty.csv", b""), {}, r"input is empty \(0 bytes\): .*empty\.csv"),
    "header only": (lambda d: _write_bytes(d / "header.csv", (HEADER + "\n").encode()), {},
                    r"header\.csv.*has no rows"),
    "csv said to be parquet": (lambda d: _write_bytes(d / "events.dat", (HEADER + "\nu,i,2020-01-01,1,rating,x\n").encode()),
                               {"format": "parquet"}, r"events\.dat is not a Parquet file"),
    "unknown extension": (lambda d: _write_bytes(d / "events.dat", b"x"), {}, r"cannot tell the format of .*events\.dat"),
    "utf-16 text": (lambda d: _write_bytes(d / "utf16.csv", (HEADER + "\nu1,i1,2020-01-01 00:00:00,3,rating,x\n").encode("utf-16")),
                    {}, r"utf16\.csv is not valid UTF-8"),
    "latin-1 text": (lambda d: _write_bytes(d / "latin1.csv", (HEADER + "\nu1,caf\u00e9,2020-01-01 00:00:00,3,rating,x\n").encode("latin-1")),
                     {}, r"latin1\.csv is not valid UTF-8"),
    "csv said to be json": (lambda d: _write_bytes(d / "lines.json", (HEADER + "\nu1,i1,2020-01-01,3,rating,x\n").encode()),
                            {}, r"lines\.json.* has no columns as json"),
    "columns not in file": (lambda d: _write_bytes(d / "other.csv", b"a;b;c\n1;2;3\n"), {},
                            r"other\.csv.* has no column\(s\) .*event_ts.*found: a;b;c"),
}


@pytest.mark.parametrize("case", list(FAILURES), ids=list(FAILURES))
def test_unreadable_source_fails_and_changes_nothing(spark, acceptance, tmp_path, case):
    make_path, extra, message = FAILURES[case]
    path = make_path(tmp_path)
    cfg = acceptance.cfg.with_overrides([f"ingest.events.path={path}"]
                                        + [f"ingest.events.{k}={v}" for k, v in extra.items()])
    lakehouse = acceptance.lakehouse
    before = lakehouse.versions(ALL_TABLES)
    with pytest.raises(SourceReadError, match=message):
        run_ingest(spark, lakehouse, cfg, run_id=f"fail-{case}")
    assert lakehouse.versions(ALL_TABLES) == before
    assert lakehouse.read(JOB_LOG).where(F.col("run_id") == f"fail-{case}").count() == 0


def test_failure_on_fresh_lakehouse_creates_no_table(spark, tmp_path):
    cfg = make_config(tmp_path / "lakehouse", ingest=_ingest_section(tmp_path / "missing.parquet"))
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    with pytest.raises(SourceReadError, match="missing.parquet"):
        run_ingest(spark, lakehouse, cfg)
    assert lakehouse.versions(ALL_TABLES) == {}
    assert not (tmp_path / "lakehouse").exists()


def test_config_that_would_reject_everything_is_refused(spark, tmp_path):
    cfg = make_config(tmp_path / "lakehouse", ingest={"events": {"path": str(tmp_path / "x.csv"),
                                                                  "default_event_type": "like"}})
    with pytest.raises(ValueError, match=r"ingest\.events\.default_event_type='like' is not in ingest\.event_types"):
        run_ingest(spark, Lakehouse(spark, cfg.lakehouse.root), cfg)
    with pytest.raises(ValueError, match=r"ingest\.events is not set"):
        run_ingest(spark, Lakehouse(spark, cfg.lakehouse.root), make_config(tmp_path / "lakehouse"))



def test_job_reports_an_unreadable_source(spark, tmp_path, capsys):
    from jobs import ingest

    rc = ingest.main(["--set", f"lakehouse.root={tmp_path / 'lakehouse'}",
                      "--set", f"ingest.events.path={tmp_path / 'missing.csv'}"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "xrec ingest: error: ingest.events.path: no input file at" in err and "No table was changed" in err
    assert not (tmp_path / "lakehouse").exists()
