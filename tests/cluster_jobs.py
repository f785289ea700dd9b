"""Submitting jobs to the test standalone cluster, and the small settings the cluster tests share.

Jobs are submitted as a cluster user would: the venv's ``spark-submit``, ``--master
spark://...``, the two Delta jars of the project cache with ``--jars`` (no network), the config
file with ``--files``, a lakehouse root every worker can reach (a folder on this machine). With
``delta_packages=`` a job gets Delta the other way docs/cluster.md gives: ``--packages``, which
Spark's Ivy resolves from Maven Central (the one submission of the suite that leaves loopback).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CIAO_SAMPLE, REPO, TEST_SPARK, make_config
from standalone import LOOPBACK
from xrec_spark.config import DeltaConfig
from xrec_spark.features.build import OUTPUTS as FEATURE_TABLES
from xrec_spark.features.build import build_features
from xrec_spark.ingest.run import run_ingest
from xrec_spark.jars import delta_coordinates, ensure_delta_jars
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE, Lakehouse, TableSpec

CIAO_INGEST = {"events": {"path": str(CIAO_SAMPLE), "format": "parquet",
                          "columns": {"user_id": "user_id", "item_id": "item_id", "event_ts": "event_ts",
                                      "value": "rating", "category": "category_id"},
                          "default_event_type": "rating"}}
# Tiny and fast: 2 shuffle partitions, 2 negatives per positive, 4 training files.
SECTIONS = {"ingest": CIAO_INGEST,
            "features": {"negatives": {"per_positive": 2}, "training_files": 4, "history_length": 5}}
SUBMIT_TIMEOUT = 1200  # generous: a loaded 2-core machine is slow
# Columns that name the run rather than the data (differ between any two runs).
RUN_COLUMNS = {"ingest_run_id", "ingested_at", "run_id", "quarantined_at", "updated_at"}
COMPARED: tuple[TableSpec, ...] = (BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE, *FEATURE_TABLES)
# Small-data settings of the test session (few partitions everywhere, Delta snapshots in 2
# partitions instead of 50), shipped in the job config as a cluster user would tune them.
JOB_CONF = {**TEST_SPARK["conf"]}


def write_job_config(path: Path, lakehouse_root: Path, **sections: dict) -> Path:
    """A YAML job config as a cluster user ships it (spark.* only fills what spark-submit left)."""
    data = {"spark": {"shuffle_partitions": 2, "conf": JOB_CONF},
            "lakehouse": {"root": str(lakehouse_root)}, **sections}
    path.write_text(yaml.safe_dump(data))
    return path


def delta_package() -> str:
    """The coordinate docs/cluster.md gives to ``--packages`` (``io.delta:delta-spark_2.13:<version>``
    of the pinned Delta; Ivy brings ``delta-storage`` as its dependency)."""
    return delta_coordinates(DeltaConfig())[0]


def packages_args(fresh_dir: Path) -> list[str]:
    """spark-submit arguments that take Delta from ``--packages`` with nothing cached: Ivy's cache
    and jars in ``fresh_dir/ivy`` (``spark.jars.ivy``), and ``user.home`` of the submitting JVM
    (where Ivy resolves, in client mode) moved to ``fresh_dir/home``: Spark's first resolver is
    ``~/.m2/repository``, where ``xrec setup-jars``' Maven leaves these very jars (it skips them
    there only while their pom is missing)."""
    return ["--packages", delta_package(), "--conf", f"spark.jars.ivy={fresh_dir / 'ivy'}",
            "--driver-java-options", f"-Duser.home={fresh_dir / 'home'}"]


def submit_command(master: str, job: str, config: Path, *args: str,
                   delta_packages: Path | None = None) -> list[str]:
    """The spark-submit command line; Delta's jars from the project cache (``--jars``), or from
    ``--packages`` resolved into the fresh folder ``delta_packages`` (:func:`packages_args`)."""
    spark_submit = Path(sys.executable).parent / "spark-submit"
    if delta_packages is None:
        jars = ensure_delta_jars(make_config(config.parent).spark.delta)
        delta = ["--jars", ",".join(str(j.resolve()) for j in jars)]
    else:
        delta = packages_args(delta_packages)
    return [str(spark_submit), "--master", master, "--driver-memory", "1g", "--executor-memory", "768m",
            *delta, "--files", str(config),
            "--conf", "spark.ui.enabled=false", "--conf", "spark.task.maxFailures=4",
            f"jobs/{job}.py", "--config", str(config), *args]


def submit_env() -> dict[str, str]:
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": LOOPBACK, "PYTHONUNBUFFERED": "1"}


def start_submit(master: str, job: str, config: Path, *args: str, log: Path) -> subprocess.Popen:
    """Start spark-submit in its own process group (so a test can kill exactly it and its children)."""
    with open(log, "wb") as out:
        return subprocess.Popen(submit_command(master, job, config, *args), cwd=REPO, env=submit_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def submit(master: str, job: str, config: Path, *args: str,
           delta_packages: Path | None = None) -> subprocess.CompletedProcess:
    """Run one job to completion; returns the finished process (stdout, stderr), fails the test
    with the log tail otherwise. ``delta_packages``: see :func:`submit_command`."""
    proc = subprocess.run(submit_command(master, job, config, *args, delta_packages=delta_packages),
                          cwd=REPO, env=submit_env(),
                          capture_output=True, text=True, timeout=SUBMIT_TIMEOUT, check=False)
    if proc.returncode != 0:
        pytest.fail(f"spark-submit {job} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    return proc


def assert_same_tables(spark, got_root: Path, want_root: Path, specs=COMPARED) -> None:
    """Every table equal ignoring row order, counting duplicates (run-identity columns dropped)."""
    got, want = Lakehouse(spark, str(got_root)), Lakehouse(spark, str(want_root))
    for spec in specs:
        cols = [c for c in spec.columns if c not in RUN_COLUMNS]
        a, b = got.read(spec).select(cols), want.read(spec).select(cols)
        n_a, n_b = a.count(), b.count()
        extra, lost = a.exceptAll(b).count(), b.exceptAll(a).count()
        assert (n_a, extra, lost) == (n_b, 0, 0), \
            f"{spec.qualified}: {n_a} rows vs {n_b} in local mode, {extra} extra, {lost} missing"


def local_reference(spark, root: Path) -> Path:
    """Ingest + features on the Ciao sample in local mode (the session-wide fixture)."""
    cfg = make_config(root, **SECTIONS)
    lakehouse = Lakehouse(spark, str(root))
    run_ingest(spark, lakehouse, cfg)
    build_features(spark, lakehouse, cfg)
    return root
