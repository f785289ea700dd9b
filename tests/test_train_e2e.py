"""Training end to end on 2 CPU processes (gloo) from hand-made Delta tables.

One module-scoped lakehouse; the reference run goes through ``xrec train`` (TorchDistributor,
local_mode, petastorm); the failing run, its resume and the torchrun run are compared with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_config
from train_tables import SMALL_MODEL, write_silver
from xrec_spark.tables import JOB_LOG, RUNS, Lakehouse
from xrec_spark.train.launch import INPUTS, TrainingFailedError, run_training
from xrec_spark.train.checkpoints import RunPaths, load_state
from xrec_spark.train.ddp import TrainResult

pytestmark = pytest.mark.slow

TRAIN = {
    "num_processes": 2, "local_mode": True, "batch_size": 64, "loader": "petastorm",
    "phases": [{"name": "pretrain", "epochs": 2, "lr": 0.01},
               {"name": "freeze", "epochs": 1, "lr": 0.01},
               {"name": "finetune", "epochs": 1, "lr": 0.005, "shared_lr_scale": 0.1}],
    "target_categories": ["c2"], "checkpoint_every_steps": 4, "patience": 3, "seed": 3,
}


@pytest.fixture(scope="module")
def lake_root(spark, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_e2e") / "lakehouse"
    write_silver(spark, Lakehouse(spark, str(root)))
    return root


def _config_file(root: Path, name: str, **train) -> tuple[Path, object]:
    cfg = make_config(root, model=SMALL_MODEL, train={**TRAIN, **train})
    path = root.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path, cfg


@pytest.fixture(scope="module")
def reference(spark, lake_root):
    """The uninterrupted run, through the job entry point."""
    from jobs.train import main

    config, cfg = _config_file(lake_root, "reference")
    out_lines: list[str] = []
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["--config", str(config)]) == 0
    out_lines = buffer.getvalue().splitlines()
    model_line = next(line for line in out_lines if line.startswith("model:"))
    result = TrainResult.read(Path(model_line.split(":", 1)[1].strip()).parent / "result.json")
    return out_lines, result, cfg


def test_two_processes_train_from_delta_and_record_lineage(spark, lake_root, reference):
    out, result, cfg = reference
    lake = Lakehouse(spark, str(lake_root))
    assert result.world_size == 2
    phases = [h["phase"] for h in result.history]
    assert phases == ["pretrain", "pretrain", "freeze", "finetune"]
    assert result.history[1]["loss"] < result.history[0]["loss"]             # the loss decreases
    assert result.metrics["valid_ndcg@10"] > 0 and result.best_at is not None
    assert any(line.startswith("mlflow run:") for line in out) and any(line.startswith("runs row:") for line in out)

    row = lake.read(RUNS).where(f"run_id = '{result.run_id}'").collect()
    assert len(row) == 1
    pinned = {spec.qualified: lake.version(spec) for spec in INPUTS}
    assert row[0]["input_versions"] == pinned                                 # time-travel to reproduce
    assert row[0]["checkpoint_path"] == result.model_path and Path(result.model_path).is_file()
    assert row[0]["config_hash"] == cfg.fingerprint()
    assert row[0]["metrics"]["valid_ndcg@10"] == pytest.approx(result.metrics["valid_ndcg@10"])
    assert lake.read(JOB_LOG).where("job = 'train'").count() == 1

    from mlflow.tracking import MlflowClient

    params = json.loads(row[0]["params"])
    client = MlflowClient(tracking_uri=params["tracking_uri"])
    run = client.get_run(params["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["input.silver.training_examples"] == str(pinned["silver.training_examples"])
    assert len(client.get_metric_history(run.info.run_id, "epoch_loss")) == 4
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model.pt", "result.json", "spec.json"}

    from xrec_spark.model.checkpoint import read_checkpoint

    _, meta = read_checkpoint(result.model_path)
    assert meta["model_version"] == result.model_version


def test_rerun_on_unchanged_inputs_launches_nothing_and_writes_nothing(spark, lake_root, reference):
    _, result, cfg = reference
    lake = Lakehouse(spark, str(lake_root))
    before = lake.versions([RUNS, JOB_LOG])
    again = run_training(cfg, lake)
    assert again.reused and again.result == result
    assert again.format().startswith("already trained")
    assert lake.versions([RUNS, JOB_LOG]) == before


def test_a_failing_rank_surfaces_and_the_resumed_run_ends_the_same(spark, lake_root, reference):
    _, ref, _ = reference
    lake = Lakehouse(spark, str(lake_root))
    config, cfg = _config_file(lake_root, "interrupted", checkpoint_dir=str(lake_root.parent / "ckpt-interrupted"))
    runs_version = lake.version(RUNS)
    # Global step 6 is inside the first epoch, after the step-4 checkpoint.
    with pytest.raises(TrainingFailedError, match=r"rank 1: RuntimeError: injected failure at global step 6") as err:
        run_training(cfg, lake, fail_at_step=6, fail_rank=1)
    assert "Traceback" in str(err.value) and "_fail_hook" in str(err.value)
    assert lake.version(RUNS) == runs_version                                 # no gold row from a failure
    paths = RunPaths.of(lake_root.parent / "ckpt-interrupted" / ref.run_id)
    assert not list(paths.root.glob(".*.tmp")) and not paths.result.exists()
    assert load_state(paths.state)["position"]["global_step"] == 4

    from jobs.train import main

    assert main(["--config", str(config), "--resume"]) == 0
    resumed = TrainResult.read(paths.result)
    assert resumed.run_id == ref.run_id
    assert resumed.metrics["steps"] == ref.metrics["steps"]
    assert resumed.metrics["final_loss"] == pytest.approx(ref.metrics["final_loss"], rel=1e-5)
    assert resumed.metrics["valid_ndcg@10"] == pytest.approx(ref.metrics["valid_ndcg@10"], abs=1e-6)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in ref.history], rel=1e-5)


def test_torchrun_runs_the_same_train_function_without_spark(lake_root):
    from jobs.train import main

    ckpt = lake_root.parent / "ckpt-torchrun"
    config, _ = _config_file(lake_root, "torchrun", loader="arrow", checkpoint_dir=str(ckpt))
    spec_path = lake_root.parent / "torchrun-spec.json"
    assert main(["--config", str(config), "--write-spec", str(spec_path)]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "xrec_spark.train.ddp", "--spec", str(spec_path)],
        cwd=REPO, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    result = TrainResult.read(Path(printed["model_path"]).parent / "result.json")
    assert result.world_size == 2 and len(result.history) == 4
    assert result.history[1]["loss"] < result.history[0]["loss"]


def test_two_processes_train_the_prior_and_category_softmax_with_sparse_tables(spark, lake_root):
    """The shipped recipe's parts under DDP (gloo all-reduces the sparse id-table gradients)."""
    lake = Lakehouse(spark, str(lake_root))
    model = {**SMALL_MODEL, "item_bias": True, "loss": "softmax", "temperature": 1.0, "min_item_count": 1,
             "sparse_embeddings": True, "history_encoder": "category_attention"}
    cfg = make_config(lake_root, model=model, train={**TRAIN, "weight_decay": 0.1, "target_categories": [],
                                                     "phases": [{"name": "finetune", "epochs": 3, "lr": 0.01}]})
    report = run_training(cfg, lake)
    history = report.result.history
    assert report.result.world_size == 2 and len(history) == 3
    assert history[-1]["loss"] < history[0]["loss"]
    assert report.result.metrics["valid_ndcg@10"] > 0

