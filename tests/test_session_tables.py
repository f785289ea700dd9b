from pyspark.sql import functions as F

from xrec_spark.config import DeltaJars
from xrec_spark.session import DELTA_EXTENSION, session_conf
from delta.tables import DeltaTable

from xrec_spark.tables import ALL_TABLES, BRONZE_QUARANTINE, TableNotFoundError, latest_commit, table

import pytest

from conftest import make_config


def test_session_has_delta_and_project_python(spark):
    import sys

    assert spark.conf.get("spark.sql.extensions") == DELTA_EXTENSION
    assert spark.sparkContext.pythonExec == sys.executable


def test_packages_mode_uses_maven_coordinates(tmp_path):
    cfg = make_config(tmp_path, spark={"delta": {"jars": "packages"}})
    conf = session_conf(cfg.spark)
    assert conf["spark.jars.packages"] == "io.delta:delta-spark_2.13:4.0.1,io.delta:delta-storage:4.0.1"
    assert "spark.jars" not in conf
    assert cfg.spark.delta.jars is DeltaJars.PACKAGES


def test_table_names_are_unique_and_resolvable():
    names = [t.qualified for t in ALL_TABLES]
    assert len(names) == len(set(names))
    assert table("bronze.events").keys == ("event_id",)
    with pytest.raises(KeyError, match="unknown table 'bronze.nope'"):
        table("bronze.nope")


def _quarantine_rows(spark, raws):
    return spark.createDataFrame([(r,) for r in raws], "raw string").select(
        F.lit("run").alias("run_id"), F.lit("file.csv").alias("source"), "raw",
        F.lit("why").alias("reason"), F.current_timestamp().alias("quarantined_at"))


def test_merge_is_idempotent_and_versions_advance(spark, lakehouse):
    assert lakehouse.version(BRONZE_QUARANTINE) is None
    with pytest.raises(TableNotFoundError, match="bronze.quarantine does not exist"):
        lakehouse.read(BRONZE_QUARANTINE)
    rows = _quarantine_rows(spark, ["a", "b", "c"])
    first = lakehouse.merge(BRONZE_QUARANTINE, rows, keys=["raw"], update=False, job="test")
    again = lakehouse.merge(BRONZE_QUARANTINE, rows, keys=["raw"], update=False, job="test")
    assert first["numTargetRowsInserted"] == 3
    assert again == {}
    assert lakehouse.read(BRONZE_QUARANTINE).count() == 3
    assert lakehouse.version(BRONZE_QUARANTINE) == 1  # create, merge; the no-op merge commits nothing
    assert lakehouse.read(BRONZE_QUARANTINE, version=0).count() == 0


def test_a_first_merge_into_an_empty_table_is_an_append_and_later_ones_merge(spark, lakehouse):
    rows = _quarantine_rows(spark, ["a", "b", "a"])
    assert lakehouse.merge(BRONZE_QUARANTINE, rows, keys=["raw"], update=False)["numTargetRowsInserted"] == 3
    path = lakehouse.path(BRONZE_QUARANTINE)
    assert DeltaTable.forPath(spark, path).history(1).first()["operation"] == "WRITE"
    # Like a MERGE into an empty table: every source row lands, duplicate source keys included.
    assert sorted(r["raw"] for r in lakehouse.read(BRONZE_QUARANTINE).collect()) == ["a", "a", "b"]
    again = lakehouse.merge(BRONZE_QUARANTINE, _quarantine_rows(spark, ["b", "c"]), keys=["raw"], update=False)
    assert again["numTargetRowsInserted"] == 1
    assert DeltaTable.forPath(spark, path).history(1).first()["operation"] == "MERGE"


def test_two_first_merges_at_once_leave_one_row_per_key(spark, tmp_path):
    """Two writers MERGE overlapping rows into the same new table together: whichever way the
    race goes (both append beside each other, or one MERGEs after the other), every key lands
    once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from xrec_spark.tables import Lakehouse

    lake = Lakehouse(spark, str(tmp_path / "race"))
    halves = [_quarantine_rows(spark, ["a", "b", "c"]), _quarantine_rows(spark, ["c", "d"])]
    start = threading.Barrier(2)

    def write(i: int) -> dict:
        start.wait()
        return lake.merge(BRONZE_QUARANTINE, halves[i], keys=["raw"], update=False)

    with ThreadPoolExecutor(max_workers=2) as pool:
        [f.result(timeout=300) for f in [pool.submit(write, i) for i in range(2)]]
    assert sorted(r["raw"] for r in lake.read(BRONZE_QUARANTINE).collect()) == ["a", "b", "c", "d"]


def test_version_from_the_log_listing_matches_history_past_a_checkpoint(spark, lakehouse):
    lakehouse.create_if_missing(BRONZE_QUARANTINE)
    path = lakehouse.path(BRONZE_QUARANTINE)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.checkpointInterval' = '2')")
    for raw in "abcd":   # commits 2..5, with checkpoint files beside the commit files
        lakehouse.merge(BRONZE_QUARANTINE, _quarantine_rows(spark, [raw]), keys=["raw"], update=False)
    history = DeltaTable.forPath(spark, path).history(1).select("version").first()["version"]
    assert lakehouse.version(BRONZE_QUARANTINE) == latest_commit(spark, path) == history == 5
    # A commit's metrics read from its log file are the ones DESCRIBE HISTORY shows.
    shown = DeltaTable.forPath(spark, path).history(1).first()["operationMetrics"]
    assert lakehouse.last_operation_metrics(BRONZE_QUARANTINE) == {k: int(v) for k, v in shown.items()}
    assert lakehouse.last_operation_metrics(BRONZE_QUARANTINE)["numTargetRowsInserted"] == 1
    assert latest_commit(spark, f"{lakehouse.root}/no/such/table") is None


def test_arrays_with_nullable_elements_are_written_or_refused_by_content(spark, lakehouse):
    """A DataFrame built with plain ``array<int>`` (elements may be null) fits a table declared
    with non-null elements when no element is null; a null element fails naming the column
    instead of being stored as 0."""
    from xrec_spark.tables import USER_HISTORY

    good = spark.createDataFrame([(1, [3, 4]), (2, [5])], "user_idx int, history array<int>")
    lakehouse.overwrite(USER_HISTORY, good)
    assert sorted(tuple(r) for r in lakehouse.read(USER_HISTORY).collect()) == [(1, [3, 4]), (2, [5])]

    bad = spark.createDataFrame([(3, [7, None])], "user_idx int, history array<int>")
    version = lakehouse.version(USER_HISTORY)
    with pytest.raises(Exception, match="column history has an array with a null element"):
        lakehouse.overwrite(USER_HISTORY, bad)
    assert lakehouse.version(USER_HISTORY) == version
