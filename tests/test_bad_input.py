"""Bad input that tests/test_ingest*.py and tests/test_model_checkpoint.py do not already cover:
a corrupt Parquet file (alone and next to a good one), schema drift in Parquet (new, missing,
renamed columns), NaN/inf values, a Parquet file with no rows, and a job pointed at tables that
do not exist. Each case gives an error naming the file/column/table or quarantines the rows,
and leaves every stored table at the version it had.

Already covered elsewhere (see RELIABILITY.md): missing file, empty/header-only CSV, CSV with
wrong delimiter, UTF-16/Latin-1 text, CSV said to be Parquet/JSON, ids with whitespace and
unicode (test_ingest.py); checkpoints from another config or shape (test_model_checkpoint.py).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from xrec_spark.features.build import build_features
from xrec_spark.ingest.readers import SourceReadError
from xrec_spark.ingest.run import run_ingest
from xrec_spark.tables import ALL_TABLES, BRONZE_EVENTS, BRONZE_QUARANTINE, Lakehouse, TableNotFoundError

COLUMNS = {"user_id": "user_id", "item_id": "item_id", "event_ts": "event_ts", "value": "rating",
           "category": "category"}


def _frame(n: int = 6, first: int = 0) -> pd.DataFrame:
    """``n`` good rows: users u<k>, items i<k>, ratings 1..5, one day apart from 2020-01-01."""
    return pd.DataFrame({
        "user_id": [f"u{k}" for k in range(first, first + n)],
        "item_id": [f"i{k}" for k in range(first, first + n)],
        "event_ts": [datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(days=k) for k in range(first, first + n)],
        "rating": [float(1 + k % 5) for k in range(first, first + n)],
        "category": ["books" if k % 2 else "music" for k in range(first, first + n)],
    })


def _write(df: pd.DataFrame, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
    return str(path)


def _cfg(root, path):
    return make_config(root / "lakehouse", ingest={"events": {"path": str(path), "format": "parquet",
                                                              "columns": COLUMNS}})


@pytest.fixture(scope="module")
def stored(spark, tmp_path_factory):
    """A lakehouse holding one good ingest of 6 rows: what no bad input may change."""
    root = tmp_path_factory.mktemp("bad_input")
    good = _write(_frame(), root / "good" / "part-0.parquet")
    cfg = _cfg(root, good)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    run_ingest(spark, lakehouse, cfg, run_id="good")
    return cfg, lakehouse, root


def _corrupt(d):
    """A real Parquet file with its middle overwritten: magic bytes intact, pages unreadable."""
    path = d / "corrupt.parquet"
    _write(_frame(50), path)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid - 200:mid + 200] = b"\x00" * 400
    path.write_bytes(bytes(data))
    return path


def _truncated(d):
    path = d / "truncated.parquet"
    _write(_frame(), path)
    path.write_bytes(path.read_bytes()[:-40])  # footer cut off, as by a copy that died
    return path


def _corrupt_next_to_good(d):
    _write(_frame(4, first=100), d / "batch" / "part-0.parquet")
    (d / "batch" / "part-1.parquet").write_bytes(_truncated(d).read_bytes())
    return d / "batch"


def _renamed(d):
    return _write(_frame().rename(columns={"rating": "score"}), d / "renamed.parquet")


def _missing(d):
    return _write(_frame().drop(columns=["event_ts"]), d / "missing.parquet")


def _zero_rows(d):
    return _write(_frame().iloc[0:0], d / "zero.parquet")


# (make input, error message pattern)
FAILURES = {
    "corrupt parquet pages": (_corrupt, r"reading failed: .*corrupt\.parquet"),
    # The cause is the innermost JVM exception's first line, not py4j's "An error occurred while
    # calling o123.parquet."
    "truncated parquet footer": (_truncated, r"cannot read '\S*/truncated\.parquet' as parquet: "
                                             r"java\.lang\.RuntimeException: \S*/truncated\.parquet is not a "
                                             r"Parquet file\. Expected magic number at tail"),
    "corrupt file next to a good one": (_corrupt_next_to_good, r"reading failed: \S*/part-1\.parquet: "
                                                               r".*is not a Parquet file"),
    "renamed column": (_renamed, r"has no column\(s\) rating \(found: user_id, item_id, event_ts, score, category\)"),
    "missing column": (_missing, r"has no column\(s\) event_ts"),
    "parquet with no rows": (_zero_rows, r"has no rows"),
}


@pytest.mark.parametrize("case", list(FAILURES), ids=list(FAILURES))
def test_bad_parquet_fails_clearly_and_changes_nothing(spark, stored, tmp_path, case):
    cfg, lakehouse, _ = stored
    make, message = FAILURES[case]
    bad = cfg.with_overrides([f"ingest.events.path={make(tmp_path)}"])
    before = lakehouse.versions(ALL_TABLES)
    with pytest.raises(SourceReadError, match=message) as raised:
        run_ingest(spark, lakehouse, bad, run_id=f"bad-{case}")
    assert "An error occurred while calling" not in str(raised.value)
    assert lakehouse.versions(ALL_TABLES) == before
    assert lakehouse.read(BRONZE_EVENTS).count() == 6


def test_new_column_is_ignored(spark, stored, tmp_path):
    """Schema drift that adds a column: the mapped columns are read, the new one is not stored."""
    cfg, lakehouse, _ = stored
    path = _write(_frame(3, first=200).assign(device="phone"), tmp_path / "extra.parquet")
    summary = run_ingest(spark, lakehouse, cfg.with_overrides([f"ingest.events.path={path}"]), run_id="extra")
    assert summary.inserted_events == 3
    assert "device" not in lakehouse.read(BRONZE_EVENTS).columns
    got = {r["user_id"] for r in lakehouse.read(BRONZE_EVENTS).where(F.col("ingest_run_id") == "extra").collect()}
    assert got == {"u200", "u201", "u202"}


def test_nan_and_inf_are_quarantined(spark, tmp_path):
    """NaN, +inf, -inf ratings are out of range; a NaN epoch timestamp cannot be parsed."""
    frame = _frame(7)
    # Written with pyarrow from plain lists: pandas' to_parquet would turn NaN into null.
    table = pa.table({
        "user_id": list(frame["user_id"]), "item_id": list(frame["item_id"]),
        "event_ts": [1_577_836_800.0 + 86_400 * k for k in range(6)] + [math.nan],
        "rating": [4.0, math.nan, math.inf, -math.inf, 3.0, 2.0, 5.0],
        "category": list(frame["category"]),
    })
    assert table.column("rating").null_count == 0  # real NaN, not null
    path = tmp_path / "nan.parquet"
    pq.write_table(table, path)
    cfg = _cfg(tmp_path, path)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    summary = run_ingest(spark, lakehouse, cfg, run_id="nan")
    assert summary.accepted_events == 3
    assert summary.quarantined == {"value out of range": 3, "unparseable timestamp": 1}
    assert sorted(r["user_id"] for r in lakehouse.read(BRONZE_EVENTS).collect()) == ["u0", "u4", "u5"]
    reasons = sorted(r["reason"] for r in lakehouse.read(BRONZE_QUARANTINE).collect())
    assert reasons == ["unparseable timestamp"] + ["value out of range"] * 3


def test_features_without_bronze_names_the_table(spark, tmp_path):
    cfg = make_config(tmp_path / "empty-lakehouse")
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    with pytest.raises(TableNotFoundError, match=r"table bronze\.events does not exist at .*empty-lakehouse"):
        build_features(spark, lakehouse, cfg)
    assert lakehouse.versions(ALL_TABLES) == {}


def test_features_job_pointed_at_a_missing_lakehouse_fails_before_writing(spark, stored, tmp_path):
    """A config with a wrong lakehouse.root must not create tables there or touch the real one."""
    from jobs import build_features as job

    cfg, lakehouse, _ = stored
    before = lakehouse.versions(ALL_TABLES)
    wrong = tmp_path / "typo-lakehouse"
    with pytest.raises(TableNotFoundError, match="bronze.events"):
        job.main(["--set", f"lakehouse.root={wrong}", "--set", "spark.master=local[2]"])
    assert Lakehouse(spark, str(wrong)).versions(ALL_TABLES) == {}
    assert lakehouse.versions(ALL_TABLES) == before


@pytest.mark.slow
def test_training_on_a_single_day_of_events_says_why_there_is_nothing_to_train(spark, tmp_path):
    """Every event on one day: the whole-day temporal split has no train day, so training has no
    examples. The error says why and what to do; no gold.runs row is written."""
    from xrec_spark.tables import RUNS
    from xrec_spark.train.launch import run_training

    one_day = _frame(12).assign(event_ts=[datetime(2020, 1, 1, h, tzinfo=timezone.utc) for h in range(12)])
    cfg = _cfg(tmp_path, _write(one_day, tmp_path / "one-day" / "part-0.parquet"))
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    run_ingest(spark, lakehouse, cfg)
    build_features(spark, lakehouse, cfg)
    with pytest.raises(ValueError, match=r"training_examples version \d+ has no rows: .*single day of events"):
        run_training(cfg, lakehouse)
    assert not lakehouse.exists(RUNS)
