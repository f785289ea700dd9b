"""The distilled student through the jobs: ``xrec train`` with ``model.distill`` on 2 DDP
processes, its own gold.runs row and MLflow run under the teacher, and the export and
candidates serving it with ``batch.model=student``."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import make_config
from xrec_spark.config import ServedModel
from train_tables import SMALL_MODEL, write_silver
from xrec_spark.batch.export import export_embeddings
from xrec_spark.batch.generate import generate_candidates
from xrec_spark.lineage import NoModelError, model_run, student_of
from xrec_spark.model.checkpoint import read_checkpoint
from xrec_spark.tables import (
    CANDIDATES, INTERACTIONS, ITEM_EMBEDDINGS, RUNS, USER_CATEGORY_AFFINITY, USER_EMBEDDINGS, Lakehouse)
from xrec_spark.train.launch import run_training

pytestmark = pytest.mark.slow

STUDENT_DIM = 4
TRAIN = {"num_processes": 2, "local_mode": True, "batch_size": 64, "loader": "arrow", "seed": 5, "patience": 3,
         "phases": [{"name": "finetune", "epochs": 2, "lr": 0.01}]}
MODEL = {**SMALL_MODEL, "item_bias": True, "loss": "softmax", "temperature": 1.0, "distill": True,
         "student_dim": STUDENT_DIM, "distill_epochs": 2, "distill_lr": 0.01, "distill_pool": 8}


@pytest.fixture(scope="module")
def distilled(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_job") / "lakehouse"
    lake = Lakehouse(spark, str(root))
    write_silver(spark, lake)
    affinity = (lake.read(INTERACTIONS).where("split = 'train'").groupBy("user_idx", "category_idx")
                .agg(F.count("*").cast("long").alias("n")))
    rows = [(r["user_idx"], r["category_idx"], r["n"], float(r["n"]), 1.0, datetime(2024, 1, 1))
            for r in affinity.collect()]
    lake.overwrite(USER_CATEGORY_AFFINITY, spark.createDataFrame(rows, USER_CATEGORY_AFFINITY.schema))
    cfg = make_config(root, model=MODEL, train=TRAIN, batch={"top_k": 3, "user_top_categories": 1})
    return lake, cfg, run_training(cfg, lake)


def test_the_training_job_distils_a_student_with_its_own_run_under_the_teacher(distilled):
    lake, cfg, report = distilled
    result, spec = report.result, report.spec
    student = result.student
    assert student is not None and student["model_version"] == f"{result.model_version}-{spec.student_tag}"
    assert [h["epoch"] for h in student["history"]] == [1, 2]
    assert student["metrics"]["parameters"] < student["metrics"]["teacher_parameters"]
    assert student["metrics"]["valid_ndcg@10"] > 0
    _, meta = read_checkpoint(student["model_path"])
    assert meta["model_config"]["embedding_dim"] == STUDENT_DIM
    assert meta["parent_model_version"] == result.model_version
    assert any(line.startswith("student:") for line in report.format().splitlines())

    rows = {r["model_version"]: r for r in lake.read(RUNS).collect()}
    teacher_params = json.loads(rows[result.model_version]["params"])
    student_params = json.loads(rows[student["model_version"]]["params"])
    assert teacher_params["role"] == "teacher" and teacher_params["student_model_version"] == student["model_version"]
    assert student_params["role"] == "student" and student_params["parent_model_version"] == result.model_version
    assert rows[student["model_version"]]["checkpoint_path"] == student["model_path"]
    assert dict(rows[student["model_version"]]["input_versions"]) == spec.input_versions()

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=report.tracking_uri).get_run(student_params["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == teacher_params["mlflow_run_id"]
    assert run.data.metrics["parameters"] == student["metrics"]["parameters"] and "valid_ndcg_at_10" in run.data.metrics

    # The latest teacher stays the default model; the student is served when asked for.
    assert model_run(lake).model_version == result.model_version
    assert model_run(lake, role="student").model_version == student["model_version"]


def test_export_and_candidates_serve_the_student_with_batch_model_student(distilled):
    lake, cfg, report = distilled
    version = report.result.student["model_version"]
    served = cfg.model_copy(update={"batch": cfg.batch.model_copy(update={"model": ServedModel.STUDENT})})
    exported = export_embeddings(lake, served)
    assert exported.model_version == version and exported.items > 0 and exported.user_pairs > 0
    dims = {len(r["vector"]) for r in lake.read(ITEM_EMBEDDINGS).where(f"model_version = '{version}'").collect()}
    assert dims == {STUDENT_DIM + 1}   # + the item bias
    users = lake.read(USER_EMBEDDINGS).where(f"model_version = '{version}'")
    assert {len(r["vector"]) for r in users.collect()} == {STUDENT_DIM + 1}

    candidates = generate_candidates(lake, served, date(2024, 2, 1))
    assert candidates.model_version == version and candidates.model_pairs > 0
    written = lake.read(CANDIDATES).where("run_date = DATE'2024-02-01' AND source = 'model'")
    assert {r["model_version"] for r in written.select("model_version").distinct().collect()} == {version}


def test_asking_for_a_student_that_was_never_distilled_names_the_switch(spark, tmp_path: Path):
    lake = Lakehouse(spark, str(tmp_path / "lakehouse"))
    row = ("r1", "m-1", "h", {}, {}, "/nowhere/model.pt", datetime(2024, 1, 1), datetime(2024, 1, 1),
           json.dumps({"role": "teacher"}))
    lake.overwrite(RUNS, spark.createDataFrame([row], RUNS.schema))
    assert model_run(lake).model_version == "m-1"
    with pytest.raises(NoModelError, match="model.distill=true"):
        model_run(lake, role="student")


def test_other_distillation_settings_reuse_the_trained_teacher(distilled):
    lake, cfg, report = distilled
    teacher_row = lake.read(RUNS).where(f"run_id = '{report.spec.run_id}'").first()
    again = cfg.model_copy(update={"model": cfg.model.model_copy(update={"distill_epochs": 1})})
    second = run_training(again, lake)
    assert second.spec.run_id == report.spec.run_id                 # the same teacher run ...
    assert second.result.history == report.result.history           # ... not trained again
    assert second.result.student["model_version"] != report.result.student["model_version"]
    assert [h["epoch"] for h in second.result.student["history"]] == [1]
    rows = {r["run_id"]: r for r in lake.read(RUNS).collect()}
    assert rows[report.spec.run_id]["finished_at"] == teacher_row["finished_at"]   # the teacher's row is kept
    assert {report.spec.student_run_id, second.spec.student_run_id} <= set(rows)
    assert run_training(again, lake).reused                          # and now nothing is left to do


def test_the_nightly_serves_the_student_of_the_model_in_use_with_batch_model_student(distilled):
    from xrec_spark.pipeline.nightly import _Night

    lake, cfg, report = distilled
    teacher = report.result.model_version
    latest = model_run(lake, role="student").model_version   # the module's tests distilled it twice
    assert student_of(lake, teacher) == latest
    assert student_of(lake, "m-unknown") is None
    served = cfg.model_copy(update={"batch": cfg.batch.model_copy(update={"model": ServedModel.STUDENT})})
    night = _Night(lake, served, date(2024, 2, 1))
    night.model_version = teacher
    assert night._served("embeddings") == night._served("candidates") == latest
    assert night._served("train") == teacher                    # the retrain decision is about the model itself
    night.model_version = "m-unknown"                           # e.g. a few-shot version: no student
    assert night._served("embeddings") == "m-unknown"
