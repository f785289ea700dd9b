"""Every job a cluster user runs, submitted with ``spark-submit`` to a real standalone cluster (a
master and two workers on 127.0.0.1), compared with the same jobs in local mode.

The chain on the Ciao sample: ingest -> build_features -> train (``train.local_mode=false``: two
barrier tasks, one per worker, each starting a torchrun rank) -> export_embeddings ->
generate_candidates (fixed ``--date``) -> evaluate (popularity baselines and the model). How they
are submitted: ``cluster_jobs.py``.

Local-mode comparisons: bronze and silver tables equal a local run of ingest + features; for
the steps after training, the local session re-runs export, candidates and evaluate on a copy of
the cluster's bronze, silver and gold.runs (the same trained model) and gets the same rows.
"""

from __future__ import annotations

import re
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from cluster_jobs import SECTIONS, assert_same_tables, submit, write_job_config
from standalone import StandaloneCluster
from train_tables import SMALL_MODEL
from xrec_spark.config import build_config
from xrec_spark.features.build import OUTPUTS as FEATURE_TABLES
from xrec_spark.tables import (
    CANDIDATES, ITEM_EMBEDDINGS, JOB_LOG, METRICS, RUNS, USER_EMBEDDINGS, Lakehouse,
)
from xrec_spark.train.launch import INPUTS

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RUN_DATE = "2024-05-01"
# Tiny model, one epoch per phase, two ranks as barrier tasks on the workers.
CHAIN = {
    **SECTIONS,
    "model": SMALL_MODEL,
    "train": {"num_processes": 2, "local_mode": False, "batch_size": 512, "seed": 3,
              "phases": [{"name": "pretrain", "epochs": 1, "lr": 0.01},
                         {"name": "freeze", "epochs": 1, "lr": 0.01},
                         {"name": "finetune", "epochs": 1, "lr": 0.005, "shared_lr_scale": 0.1}]},
    "batch": {"top_k": 10, "export_batch_size": 2048},
    "eval": {"baselines": ["popularity_category", "popularity_global"], "ks": [10], "bootstrap_samples": 20},
}


def _apps(cluster: StandaloneCluster, worker: int) -> set[str]:
    return {p.name for p in (cluster.log_dir / f"worker-{worker}").glob("app-*")}


@pytest.fixture(scope="module")
def cluster_lakehouse(cluster: StandaloneCluster, tmp_path_factory) -> tuple[Path, Path]:
    """Ingest then build_features submitted to the cluster; (config file, lakehouse root)."""
    work = tmp_path_factory.mktemp("on_cluster")
    config = write_job_config(work / "job.yaml", work / "lakehouse", **CHAIN)
    out = submit(cluster.master_url, "ingest", config).stdout
    assert "accepted:" in out
    submit(cluster.master_url, "build_features", config)
    return config, work / "lakehouse"


def test_executors_ran_on_the_workers(cluster, cluster_lakehouse):
    """The work really went to the workers: each worker launched executors for our apps."""
    for w in range(2):
        assert len(_apps(cluster, w)) >= 2, f"worker {w} ran executors for fewer than 2 applications"
        assert list((cluster.log_dir / f"worker-{w}").glob("app-*/*/stderr")), f"worker {w} ran no executor"


def test_ingest_and_features_equal_local_mode(spark, cluster_lakehouse, ciao_reference):
    _, root = cluster_lakehouse
    assert_same_tables(spark, root, ciao_reference)


def test_features_rerun_on_cluster_is_a_no_op(spark, cluster, cluster_lakehouse):
    """Same bronze and config: the incremental check skips and commits no new version."""
    config, root = cluster_lakehouse
    lakehouse = Lakehouse(spark, str(root))
    before = lakehouse.versions(FEATURE_TABLES)
    out = submit(cluster.master_url, "build_features", config).stdout
    assert "inputs unchanged" in out
    assert lakehouse.versions(FEATURE_TABLES) == before


@pytest.fixture(scope="module")
def trained(cluster: StandaloneCluster, cluster_lakehouse) -> dict:
    """train submitted with local_mode=false; its output and the applications it added per worker."""
    config, root = cluster_lakehouse
    before = [_apps(cluster, w) for w in range(2)]
    proc = submit(cluster.master_url, "train", config)
    return {"stdout": proc.stdout, "stderr": proc.stderr,
            "apps": [_apps(cluster, w) - before[w] for w in range(2)]}


def test_training_runs_as_barrier_tasks_on_both_workers(spark, cluster, cluster_lakehouse, trained):
    """Two torchrun ranks started by a barrier stage with one task in an executor of each worker
    (not on the driver); the gold.runs row names the pinned input versions."""
    _, root = cluster_lakehouse
    out = trained["stdout"] + trained["stderr"]   # spark-submit merges the driver's stderr into stdout
    assert "on 2 process(es), local_mode=False" in out, out[-3000:]
    assert re.search(r"^trained m-\w+ \(run \w+\) on 2 process\(es\): 3 epochs", out, re.M), out[-3000:]
    # Each worker's executor of the training application ran one task of the barrier stage.
    barrier_tasks = {}
    for w in range(2):
        (app,) = trained["apps"][w]
        text = "".join(p.read_text(errors="replace") for p in (cluster.log_dir / f"worker-{w}" / app).glob("*/stderr"))
        barrier_tasks[w] = set(re.findall(r"BarrierTaskContext: Task (\d+) from Stage (\d+)\(Attempt 0\) has entered "
                                          r"the global sync", text))
    assert all(len(tasks) == 1 for tasks in barrier_tasks.values()), barrier_tasks
    (task0, stage0), (task1, stage1) = barrier_tasks[0].pop(), barrier_tasks[1].pop()
    assert stage0 == stage1 and task0 != task1, barrier_tasks

    lake = Lakehouse(spark, str(root))
    runs = lake.read(RUNS).collect()
    assert len(runs) == 1
    row = runs[0]
    pinned = {spec.qualified: lake.version(spec) for spec in INPUTS}
    assert row["input_versions"] == pinned
    assert Path(row["checkpoint_path"]).is_file()
    assert np.isfinite(row["metrics"]["final_loss"])
    assert lake.read(JOB_LOG).where("job = 'train'").count() == 1


@pytest.fixture(scope="module")
def served(cluster: StandaloneCluster, cluster_lakehouse, trained) -> dict[str, str]:
    """export_embeddings, generate_candidates --date, evaluate, each submitted to the cluster."""
    config, _ = cluster_lakehouse
    return {job: submit(cluster.master_url, job, config, *args).stdout
            for job, args in (("export_embeddings", ()), ("generate_candidates", ("--date", RUN_DATE)),
                              ("evaluate", ()))}


@pytest.fixture(scope="module")
def served_locally(spark, cluster_lakehouse, served, tmp_path_factory) -> Path:
    """The same three steps in local mode on a copy of the cluster's inputs (bronze, silver,
    gold.runs: the model trained on the cluster)."""
    from xrec_spark.batch.export import export_embeddings
    from xrec_spark.batch.generate import generate_candidates
    from xrec_spark.eval.evaluate import evaluate

    config, root = cluster_lakehouse
    copy = tmp_path_factory.mktemp("served_locally") / "lakehouse"
    for part in ("bronze", "silver", "gold/runs"):
        shutil.copytree(root / part, copy / part)
    cfg = build_config({**CHAIN, "lakehouse": {"root": str(copy)}}, origin="test")
    lake = Lakehouse(spark, str(copy))
    export_embeddings(lake, cfg)
    generate_candidates(lake, cfg, date.fromisoformat(RUN_DATE))
    evaluate(lake, cfg)
    return copy


def _frame(spark, root: Path, spec, drop=()):
    """The table as pandas, without ``drop``, in key order."""
    keys = [k for k in spec.keys if k not in drop]
    return (Lakehouse(spark, str(root)).read(spec).drop(*drop).toPandas()
            .sort_values(keys).reset_index(drop=True))


def test_embeddings_equal_local_mode(spark, cluster_lakehouse, served, served_locally):
    _, root = cluster_lakehouse
    for spec in (ITEM_EMBEDDINGS, USER_EMBEDDINGS):
        got, want = _frame(spark, root, spec), _frame(spark, served_locally, spec)
        assert len(got) > 0
        keys = [c for c in got.columns if c != "vector"]
        assert got[keys].equals(want[keys]), f"{spec.qualified}: keys differ from local mode"
        np.testing.assert_allclose(np.stack(got["vector"]), np.stack(want["vector"]), rtol=1e-5, atol=1e-6)


def test_candidates_equal_local_mode(spark, cluster_lakehouse, served, served_locally):
    _, root = cluster_lakehouse
    got, want = _frame(spark, root, CANDIDATES), _frame(spark, served_locally, CANDIDATES)
    assert len(got) > 0 and set(got["run_date"].astype(str)) == {RUN_DATE}
    assert set(got["source"]) <= {"model", "fallback"} and (got["source"] == "model").any()
    pairs = ["run_date", "user_idx", "category_idx"]
    assert got[pairs].drop_duplicates().equals(want[pairs].drop_duplicates())
    assert got.groupby(pairs).size().equals(want.groupby(pairs).size())
    exact = [c for c in got.columns if c != "score"]
    assert got[exact].equals(want[exact]), "candidate lists differ from local mode"
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-6)


def test_evaluation_equals_local_mode(spark, cluster_lakehouse, served, served_locally):
    _, root = cluster_lakehouse
    drop = ("eval_id", "input_versions", "ci_low", "ci_high")
    got = _frame(spark, root, METRICS, drop)
    want = _frame(spark, served_locally, METRICS, drop)
    assert {"model", "popularity_category", "popularity_global"} <= set(got["system"])
    exact = [c for c in got.columns if c != "value"]
    assert got[exact].equals(want[exact])
    np.testing.assert_allclose(got["value"].astype(float), want["value"].astype(float), rtol=1e-6, equal_nan=True)


def test_synthetic_job_on_the_cluster_writes_what_local_mode_writes(spark, cluster: StandaloneCluster, tmp_path):
    from xrec_spark.ingest.synthetic import write_synthetic

    small = {"users": 60, "items": 80, "categories": 3, "events": 1500, "days": 3, "files": 2}
    config = write_job_config(tmp_path / "job.yaml", tmp_path / "lakehouse", **SECTIONS, synthetic=small)
    submit(cluster.master_url, "synthetic", config, "--out", str(tmp_path / "on_cluster"))
    cfg = build_config({**SECTIONS, "lakehouse": {"root": str(tmp_path / "lakehouse")}, "synthetic": small},
                       origin="test")
    local = write_synthetic(spark, cfg.synthetic, str(tmp_path / "local"))
    for kind, path in (("events", local.events), ("items", local.items), ("users", local.users)):
        got = spark.read.parquet(str(tmp_path / "on_cluster" / Path(path).name))
        want = spark.read.parquet(path)
        assert got.count() == want.count() > 0, kind
        assert got.exceptAll(want).count() == 0 and want.exceptAll(got).count() == 0, kind


def test_nightly_on_the_cluster_serves_the_same_candidates_and_reruns_as_a_no_op(
        spark, cluster: StandaloneCluster, cluster_lakehouse, served, served_locally):
    # Last in the module: it adds a second run date to the cluster's lakehouse.
    from xrec_spark.tables import ALL_TABLES

    config, root = cluster_lakehouse
    night = "2024-05-02"
    out = submit(cluster.master_url, "nightly", config, "--date", night).stdout
    lake = Lakehouse(spark, str(root))
    candidates = lake.read(CANDIDATES).drop("run_date").toPandas()
    keys = ["user_idx", "category_idx", "rank"]
    day1 = (lake.read(CANDIDATES).where(f"run_date = '{RUN_DATE}'").drop("run_date").toPandas()
            .sort_values(keys).reset_index(drop=True))
    day2 = (lake.read(CANDIDATES).where(f"run_date = '{night}'").drop("run_date").toPandas()
            .sort_values(keys).reset_index(drop=True))
    assert len(candidates) == len(day1) + len(day2) and len(day2) > 0, out
    # No new events since the cluster-trained model: the nightly keeps it and serves what
    # generate_candidates served for the first date.
    exact = [c for c in day2.columns if c != "score"]
    assert day2[exact].equals(day1[exact])
    np.testing.assert_allclose(day2["score"], day1["score"], rtol=1e-5, atol=1e-6)
    before = lake.versions(ALL_TABLES)
    submit(cluster.master_url, "nightly", config, "--date", night)
    assert lake.versions(ALL_TABLES) == before, "re-running the nightly for the same date changed a table"


def test_report_job_on_the_cluster_writes_the_report(cluster: StandaloneCluster, cluster_lakehouse, served,
                                                     tmp_path):
    config, _ = cluster_lakehouse
    out = submit(cluster.master_url, "report", config, "--set", f"eval.report_dir={tmp_path / 'report'}").stdout
    index = tmp_path / "report" / "index.md"
    assert index.is_file(), out
    text = index.read_text()
    assert "popularity_category" in text and "model" in text
    assert list((tmp_path / "report").glob("*.png"))
