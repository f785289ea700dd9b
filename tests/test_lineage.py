"""Lineage: run keys, the one meta.job_log writer and reader, skip-if-unchanged, and the Delta
history reads drift needs (through Lakehouse, the only module that touches Delta)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone

import pytest

from conftest import REPO
from source_tree import PACKAGE, module_imports
from xrec_spark.lineage import JobRun, digest, last_run
from xrec_spark.tables import BRONZE_ITEMS, BRONZE_QUARANTINE, INTERACTIONS, JOB_LOG



def test_digest_is_sha256_of_sorted_json_and_ignores_key_order():
    payload = {"b": [1, 2], "a": {"y": 1, "x": None}}
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert digest(payload) == expected
    assert digest({"a": {"x": None, "y": 1}, "b": [1, 2]}) == expected
    assert digest(payload, 16) == expected[:16]


@pytest.mark.parametrize("job, key, started, match", [
    ("", "k", None, "needs a job name and a run key"),
    ("features", "", None, "needs a job name and a run key"),
    ("features", "k", datetime(2024, 1, 1), "must carry its time zone"),
])
def test_job_run_refuses_bad_arguments(lakehouse, job, key, started, match):
    with pytest.raises(ValueError, match=match):
        JobRun(lakehouse, job, key, started_at=started)


def test_job_runs_are_recorded_once_read_back_and_skipped_when_unchanged(lakehouse):
    assert last_run(lakehouse, "features") is None
    with pytest.raises(RuntimeError, match="boom"):
        with JobRun(lakehouse, "features", "k1"):
            raise RuntimeError("boom")
    assert not lakehouse.exists(JOB_LOG)  # a failed run leaves no row

    with JobRun(lakehouse, "features", "k1", run_id="first") as run:
        assert run.unchanged() is None
        run.record({"bronze.events": 3}, {INTERACTIONS.qualified: 5}, {"rows": 7, "when": datetime(2024, 1, 2)})
        with pytest.raises(RuntimeError, match="already recorded"):
            run.record({}, {}, {})
    time.sleep(0.01)  # finished_at orders the runs
    with JobRun(lakehouse, "features", "k2", run_id="second") as run:
        run.record({"bronze.events": 4}, {INTERACTIONS.qualified: 6}, {"rows": 8})

    assert lakehouse.read(JOB_LOG).count() == 2
    latest = last_run(lakehouse, "features")
    assert (latest.run_id, latest.run_key, latest.summary) == ("second", "k2", {"rows": 8})
    first = last_run(lakehouse, "features", run_key="k1")
    assert first.run_id == "first" and first.summary == {"rows": 7, "when": "2024-01-02 00:00:00"}
    assert first.input_versions == {"bronze.events": 3}
    assert last_run(lakehouse, "features", output=(INTERACTIONS.qualified, 5)).run_id == "first"
    assert last_run(lakehouse, "features", output=(INTERACTIONS.qualified, 9)) is None
    assert last_run(lakehouse, "ingest") is None

    again = JobRun(lakehouse, "features", "k1")
    assert again.unchanged(inputs={"bronze.events": 3}, outputs={INTERACTIONS.qualified: 5}).run_id == "first"
    assert again.unchanged(inputs={"bronze.events": 4}) is None
    assert again.unchanged(outputs={INTERACTIONS.qualified: 6}) is None
    assert JobRun(lakehouse, "features", "k3").unchanged() is None
    assert again.started_at.tzinfo is timezone.utc and again.seconds >= 0


def test_history_and_change_feed_reads(spark, lakehouse):
    assert lakehouse.first_version_after(BRONZE_ITEMS, datetime(2000, 1, 1)) is None  # no table yet
    schema = BRONZE_ITEMS.schema
    row = ("i1", "books", None, None, None, None, None, datetime(2024, 1, 1), "f")
    lakehouse.append(BRONZE_ITEMS, spark.createDataFrame([row], schema))            # v0 create, v1 append
    middle = datetime.now(timezone.utc).replace(tzinfo=None)
    time.sleep(1.1)  # commit timestamps have millisecond precision; stay clear of `middle`
    lakehouse.append(BRONZE_ITEMS, spark.createDataFrame([("i2", *row[1:]), ("i3", *row[1:])], schema))  # v2
    assert lakehouse.first_version_after(BRONZE_ITEMS, datetime(2000, 1, 1)) == 0
    assert lakehouse.first_version_after(BRONZE_ITEMS, middle) == 2
    assert lakehouse.first_version_after(BRONZE_ITEMS, datetime(2999, 1, 1)) is None
    inserted = lakehouse.inserted_since(BRONZE_ITEMS, 2)
    assert sorted(r["item_id"] for r in inserted.collect()) == ["i2", "i3"]
    with pytest.raises(ValueError, match="bronze.quarantine has no Change Data Feed"):
        lakehouse.inserted_since(BRONZE_QUARANTINE, 0)


def test_only_tables_touches_delta_and_only_lineage_touches_the_job_log():
    modules = sorted(PACKAGE.rglob("*.py"))
    delta = [p.relative_to(REPO) for p in modules
             if any(m == "delta" or m.startswith("delta.") for m in module_imports(p))
             or 'format("delta")' in p.read_text()]
    assert [str(p) for p in delta] == ["xrec_spark/tables.py"]
    job_log = [str(p.relative_to(REPO)) for p in modules if "JOB_LOG" in p.read_text()]
    assert sorted(job_log) == ["xrec_spark/lineage.py", "xrec_spark/table_specs.py", "xrec_spark/tables.py"]
