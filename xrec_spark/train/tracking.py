"""Tracking and lineage of a finished training run: an MLflow run and a gold.runs row.

Both are written by the driver after the ranks have finished, from the run's TrainResult:
ranks may run on executors that cannot reach the tracking store, and a failed run must leave
no gold row. MLflow's default store here is SQLite under the lakehouse
(``<root>/mlruns/mlflow.db``, artifacts in ``<root>/mlruns/artifacts``): MLflow 3 refuses its
old file store by default. A ``train.tracking_uri`` (e.g. a tracking server) replaces it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from xrec_spark.config import JobConfig, ServedModel
from xrec_spark.tables import RUNS, Lakehouse
from xrec_spark.train.ddp import TrainResult
from xrec_spark.train.spec import TrainSpec

log = logging.getLogger(__name__)

EXPERIMENT = "xrec-train"
RUN_ID_TAG = "xrec.run_id"


def tracking_uri(cfg: JobConfig, lake: Lakehouse) -> str:
    """``train.tracking_uri``, else a SQLite store under a local lakehouse root."""
    if cfg.train.tracking_uri:
        return cfg.train.tracking_uri
    if urlparse(lake.root).scheme not in ("", "file"):
        raise ValueError(f"lakehouse.root {lake.root!r} is not a local path, so MLflow cannot keep its "
                         "default SQLite store there: set train.tracking_uri (e.g. http://mlflow:5000)")
    return f"sqlite:///{Path(lake.root) / 'mlruns' / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None   # a server decides


def _metric_name(name: str) -> str:
    # MLflow accepts letters, digits, _ - . / and spaces in metric names.
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name.replace("@", "_at_"))


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flat(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def run_params(spec: TrainSpec) -> dict[str, str]:
    """Flat params: the train and model config sections, sizes, targets, input versions."""
    out: dict[str, str] = {"run_id": spec.run_id, "model_version": spec.model_version}
    _flat("train", spec.config["train"], out)
    _flat("model", spec.config["model"], out)
    _flat("sizes", {"n_users": spec.sizes.n_users, "n_items": spec.sizes.n_items,
                    "n_categories": spec.sizes.n_categories}, out)
    out["target_categories"] = json.dumps(list(spec.target_categories))
    out["source_categories"] = json.dumps(list(spec.source_categories))
    _flat("input", spec.input_versions(), out)
    return {k: v[:6000] for k, v in out.items()}


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, uri: str) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=_artifact_location(uri))


def open_store_in_background(uri: str) -> threading.Thread:
    """Open the tracking store (a new SQLite store runs MLflow's schema migrations: ~5-8 s on
    2 cores) and its experiment on a thread while the ranks train; join it before logging.
    A failure here is left for the logging call to raise with its own message."""
    def warm() -> None:
        try:
            _experiment_id(_client(uri), uri)
        except Exception as e:   # noqa: BLE001 - reported by the real call after training
            log.debug("tracking store %s not ready in the background: %s", uri, e)

    thread = threading.Thread(target=warm, name="mlflow-store", daemon=True)
    thread.start()
    return thread


def log_mlflow(uri: str, spec: TrainSpec, result: TrainResult) -> str:
    """Log a finished run (params, per-epoch metrics, summary metrics, model and spec files);
    returns the MLflow run id. A run already logged for the same run id is reused."""
    return _log_finished(uri, spec.run_id, spec.model_version, run_params(spec), result.history, result.metrics,
                         [Path(result.run_dir) / name for name in ("model.pt", "result.json", "spec.json")])


def log_mlflow_student(uri: str, spec: TrainSpec, result: TrainResult, parent: str) -> str:
    """Log the run's distilled student as its own MLflow run, a child of the teacher's run
    ``parent`` (MLflow's parent tag nests it under the teacher in the UI)."""
    student = result.student or {}
    params = {**run_params(spec), "run_id": spec.student_run_id, "model_version": spec.student_version,
              "parent_model_version": spec.model_version}
    return _log_finished(uri, spec.student_run_id, spec.student_version, params, student.get("history", []),
                         student.get("metrics", {}), [Path(student.get("model_path", ""))],
                         {"mlflow.parentRunId": parent, "xrec.parent_model_version": spec.model_version})


def log_mlflow_derived(uri: str, run_id: str, model_version: str, params: Mapping[str, Any],
                       metrics: Mapping[str, float], checkpoint: Path, parent_model_version: str,
                       parent_mlflow_run_id: str | None) -> str:
    """Log a model derived from a trained one in the driver (a few-shot version) as its own MLflow
    run: its params and metrics and checkpoint, nested under the parent's run when it has one."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        _flat(key, value, flat)
    tags = {"xrec.parent_model_version": parent_model_version}
    if parent_mlflow_run_id:
        tags["mlflow.parentRunId"] = parent_mlflow_run_id
    return _log_finished(uri, run_id, model_version, {k: v[:6000] for k, v in flat.items()}, [], metrics,
                         [checkpoint], tags)


def _log_finished(uri: str, run_id: str, model_version: str, params: Mapping[str, str],
                  history: list[dict[str, Any]], summary: Mapping[str, float], artifacts: list[Path],
                  tags: Mapping[str, str] | None = None) -> str:
    from mlflow.entities import Metric, Param

    client = _client(uri)
    exp_id = _experiment_id(client, uri)
    done = client.search_runs([exp_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}' "
                              "and attributes.status = 'FINISHED'", max_results=1)
    if done:
        return done[0].info.run_id
    run = client.create_run(exp_id, run_name=model_version,
                            tags={RUN_ID_TAG: run_id, "xrec.model_version": model_version, **(tags or {})})
    rid = run.info.run_id
    batch = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(batch), 100):   # MLflow takes at most 100 params per batch
        client.log_batch(rid, params=batch[i:i + 100])
    now = int(datetime.now().timestamp() * 1000)
    metrics = []
    for step, record in enumerate(history, start=1):
        for key in ("loss", "samples_per_s", "data_wait_share", "seconds"):
            if key in record:
                metrics.append(Metric(_metric_name(f"epoch_{key}"), float(record[key]), now, step))
        if record.get("valid_metric") is not None:
            metrics.append(Metric(_metric_name(f"valid_{record['metric_name']}"), float(record["valid_metric"]),
                                  now, step))
        for slice_name, value in (record.get("valid_by_slice") or {}).items():
            # Not "valid_*": that prefix names the run's one early-stopping metric.
            metrics.append(Metric(_metric_name(f"slice_{slice_name}_valid_{record['metric_name']}"), float(value),
                                  now, step))
    metrics += [Metric(_metric_name(k), float(v), now, 0) for k, v in summary.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    for file in artifacts:
        if file.is_file():
            client.log_artifact(rid, str(file))
    client.set_terminated(rid, "FINISHED")
    return rid


def log_mlflow_failure(uri: str, spec: TrainSpec, message: str) -> str:
    """Record a failed attempt (params and the error as a tag) so failures show in the UI too."""
    from mlflow.entities import Param

    client = _client(uri)
    run = client.create_run(_experiment_id(client, uri), run_name=spec.model_version,
                            tags={RUN_ID_TAG: spec.run_id, "xrec.error": message[:5000]})
    params = [Param(k, v) for k, v in run_params(spec).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i:i + 100])
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def write_runs_row(lake: Lakehouse, spec: TrainSpec, result: TrainResult, config_hash: str,
                   started: datetime, finished: datetime, extra: Mapping[str, Any], teacher: bool = True) -> int:
    """MERGE the run's gold.runs rows (keyed on run_id, so a rerun updates them): the model's
    (unless ``teacher`` is false: it finished earlier and only a student was fitted now) and,
    with ``model.distill``, its student's (``role: student``, the teacher as
    ``parent_model_version`` in params). Returns the table's new version."""
    params = {"run_dir": result.run_dir, "world_size": result.world_size, "best_at": result.best_at,
              "target_categories": list(spec.target_categories), "role": ServedModel.TEACHER.value, **extra}
    if result.student is not None:
        params["student_model_version"] = spec.student_version

    def row(run_id: str, version: str, metrics: Mapping[str, float], path: str, body: Mapping[str, Any]) -> tuple:
        return (run_id, version, config_hash, dict(spec.input_versions()), {k: float(v) for k, v in metrics.items()},
                path, started, finished, json.dumps(body, sort_keys=True))

    rows = [row(spec.run_id, spec.model_version, result.metrics, result.model_path, params)] if teacher else []
    if result.student is not None:
        student = {"run_dir": result.run_dir, "world_size": result.world_size,
                   "target_categories": list(spec.target_categories), "role": ServedModel.STUDENT.value,
                   "parent_model_version": spec.model_version, "parent_run_id": spec.run_id,
                   "mlflow_run_id": extra.get("student_mlflow_run_id"), "tracking_uri": extra.get("tracking_uri")}
        rows.append(row(spec.student_run_id, spec.student_version, result.student["metrics"],
                        result.student["model_path"], student))
    lake.merge(RUNS, lake.spark.createDataFrame(rows, RUNS.schema), update=True, job="train")
    version = lake.version(RUNS)
    return -1 if version is None else version
