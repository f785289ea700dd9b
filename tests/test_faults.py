"""Faults: a worker killed mid-job, a driver killed during its writes, two ingests at once.

The first two run against a real standalone cluster (tests/standalone.py) through spark-submit;
the concurrent-ingest case runs two ingests in two threads of the session-wide driver (two Delta
writers committing to the same tables). Training kill-and-resume is covered by the training
tests (see RELIABILITY.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from conftest import CIAO_SAMPLE, make_config
from cluster_jobs import CIAO_INGEST, SECTIONS, assert_same_tables, start_submit, write_job_config
from standalone import _spawn, free_port
from xrec_spark.features.build import OUTPUTS as FEATURE_TABLES
from xrec_spark.ingest.run import run_ingest
from xrec_spark.tables import BRONZE_EVENTS, Lakehouse

JOB_TIMEOUT = 1200


@pytest.fixture
def reference(ciao_reference) -> Path:
    return ciao_reference


def _copy_layers(src: Path, dst: Path, layers: tuple[str, ...]) -> Path:
    """Copy whole Delta tables (their paths inside the log are relative, so copies are valid)."""
    for layer in layers:
        shutil.copytree(src / layer, dst / layer)
    return dst


def _wait(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        pytest.fail(f"job did not finish in {JOB_TIMEOUT}s; log tail:\n{log.read_text()[-3000:]}")


def _replace_worker(cluster, index: int) -> None:
    """Start a new worker in place of a killed one (the cluster fixture stops it at the end)."""
    wdir = cluster.log_dir / f"worker-{index}-replacement"
    wdir.mkdir(exist_ok=True)
    cluster.workers[index] = _spawn(
        "org.apache.spark.deploy.worker.Worker",
        ["--host", "127.0.0.1", "--cores", "1", "--memory", "1g", "--work-dir", str(wdir),
         "--webui-port", str(free_port()), cluster.master_url],
        cluster.log_dir / f"worker-{index}-replacement.log", cluster.log_dir)
    cluster.wait_for_workers(len(cluster.workers))


class _ExecutorTasks:
    """Follows the stderr of a worker's executor for the application started after
    ``apps_before``: which task ids it has started and not yet finished."""

    _LINE = re.compile(r"Executor: (Running|Finished) task \S+ in stage \S+ \(TID (\d+)\)")

    def __init__(self, worker_dir: Path, apps_before: set[Path]) -> None:
        self.worker_dir, self.apps_before = worker_dir, apps_before
        self.offset, self.started, self.finished = 0, set(), set()

    def running(self) -> set[str]:
        logs = [p for app in set(self.worker_dir.glob("app-*")) - self.apps_before for p in app.glob("*/stderr")]
        if logs:
            with open(logs[0], "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1   # whole lines only
            self.offset += end
            for kind, tid in self._LINE.findall(chunk[:end].decode(errors="replace")):
                (self.started if kind == "Running" else self.finished).add(tid)
        return self.started - self.finished


@pytest.mark.cluster
@pytest.mark.slow
def test_worker_killed_during_features_job_still_gives_correct_tables(spark, cluster, reference, tmp_path):
    root = _copy_layers(reference, tmp_path / "lakehouse", ("bronze",))
    config = write_job_config(tmp_path / "job.yaml", root, **SECTIONS)
    log = tmp_path / "submit.log"
    apps_before = set((cluster.log_dir / "worker-0").glob("app-*"))
    proc = start_submit(cluster.master_url, "build_features", config, log=log)
    killed = None
    try:
        # Kill once the job is computing (its first silver table exists), not before it starts,
        # and preferably while worker 0's executor is running a task (so that task is lost).
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (root / "silver").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        tasks = _ExecutorTasks(cluster.log_dir / "worker-0", apps_before)
        wait_for_task = time.monotonic() + 120
        while proc.poll() is None and not tasks.running() and time.monotonic() < wait_for_task:
            time.sleep(0.05)
        assert proc.poll() is None, f"job ended before the fault; log:\n{log.read_text()[-3000:]}"
        killed = cluster.kill_worker(0)
        code = _wait(proc, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if killed is not None:
            _replace_worker(cluster, 0)   # later tests get two workers again
    text = log.read_text(errors="replace")
    assert code == 0, text[-4000:]
    # The fault reached the job: the driver lost the killed worker's executor and went on.
    assert re.search(r"Lost executor \d+ on|Executor .* removed|Removed executor", text), text[-4000:]
    assert_same_tables(spark, root, reference, FEATURE_TABLES)


@pytest.mark.cluster
@pytest.mark.slow
def test_driver_killed_during_writes_leaves_whole_versions_and_rerun_completes(spark, cluster, reference,
                                                                                 tmp_path):
    """SIGKILL of spark-submit (and its driver) while features rewrites silver: every table is
    at its previous version or the next one, both complete (same content, since bronze and
    config are the same); the re-run finishes with the reference tables."""
    # bronze + silver copied, meta (the incremental marker) not: the job recomputes everything.
    root = _copy_layers(reference, tmp_path / "lakehouse", ("bronze", "silver"))
    lakehouse = Lakehouse(spark, str(root))
    before = lakehouse.versions(FEATURE_TABLES)
    config = write_job_config(tmp_path / "job.yaml", root, **SECTIONS)
    log = tmp_path / "submit.log"
    target = root / "silver" / "training_examples"
    files_before = set(target.rglob("*.parquet"))
    proc = start_submit(cluster.master_url, "build_features", config, log=log)
    try:
        # The last write: kill as soon as its new data files appear, before or while it commits.
        deadline = time.monotonic() + JOB_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if set(target.rglob("*.parquet")) - files_before:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"job ended before it could be killed; log:\n{log.read_text()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    after = lakehouse.versions(FEATURE_TABLES)
    for table, version in before.items():
        assert after[table] in (version, version + 1), f"{table}: version {version} -> {after[table]}"
    assert_same_tables(spark, root, reference, FEATURE_TABLES)  # no table half-written
    rerun = start_submit(cluster.master_url, "build_features", config, log=tmp_path / "rerun.log")
    assert _wait(rerun, tmp_path / "rerun.log") == 0, (tmp_path / "rerun.log").read_text()[-4000:]
    assert_same_tables(spark, root, reference, FEATURE_TABLES)


@pytest.mark.slow
def test_two_ingests_into_the_same_bronze_at_once_lose_and_double_nothing(spark, tmp_path):
    """Two writers MERGE disjoint halves of the Ciao sample into a fresh lakehouse at the same
    time (table creation included); Delta conflicts are retried; every accepted row lands once."""
    sample = pd.read_parquet(CIAO_SAMPLE)
    users = sorted(sample["user_id"].unique())
    halves = [sample[sample["user_id"].isin(users[i::2])] for i in range(2)]
    paths = []
    for i, half in enumerate(halves):
        path = tmp_path / f"half-{i}.parquet"
        half.to_parquet(path, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
        paths.append(path)
    root = tmp_path / "lakehouse"
    lakehouse = Lakehouse(spark, str(root))
    cfgs = [make_config(root, ingest={**CIAO_INGEST, "events": {**CIAO_INGEST["events"], "path": str(p)}})
            for p in paths]
    start = threading.Barrier(2)

    def ingest(i: int):
        start.wait()  # both writers start together
        return run_ingest(spark, lakehouse, cfgs[i], run_id=f"writer-{i}")

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(ingest, i) for i in range(2)]
        results = [f.result(timeout=JOB_TIMEOUT) for f in futures]  # re-raises a writer's error
    events = lakehouse.read(BRONZE_EVENTS)
    accepted = sum(r.accepted_events for r in results)
    assert events.count() == accepted == sum(r.inserted_events for r in results)
    assert events.select("event_id").distinct().count() == accepted
    per_writer = {r["ingest_run_id"]: r["count"] for r in events.groupBy("ingest_run_id").count().collect()}
    assert per_writer == {f"writer-{i}": results[i].accepted_events for i in range(2)}
    # A solo ingest of the whole sample accepts exactly the union (nothing lost to the race).
    solo_root = tmp_path / "solo"
    solo_cfg = make_config(solo_root, ingest=CIAO_INGEST)
    solo = run_ingest(spark, Lakehouse(spark, str(solo_root)), solo_cfg)
    assert solo.accepted_events == accepted
