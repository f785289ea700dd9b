"""Driver side of training: pin the inputs, build the TrainSpec, launch the ranks, report.

Only this module (and the job entry point) touches Spark. It pins every input table at its
current Delta version and hands the ranks the Parquet files of exactly that version, so the
run reads a fixed snapshot even while other jobs write, and ``gold.runs`` can name the
versions to time-travel back to.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import functions as F

from xrec_spark.config import JobConfig, TaskWeighting, WeightAverageKind
from xrec_spark.lineage import JobRun, digest, run_params
from xrec_spark.tables import (
    CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS, ITEM_FEATURES, ITEM_INDEX, RUNS, TRAINING_EXAMPLES,
    USER_HISTORY, USER_INDEX, Lakehouse, TableNotFoundError, TableSpec, each_table)
from xrec_spark.train.checkpoints import RunPaths
from xrec_spark.train.ddp import TrainResult, train
from xrec_spark.train.spec import DISTILL_KEYS, InputTable, ResumeMode, Sizes, TrainSpec

log = logging.getLogger(__name__)

JOB = "train"
REQUIRED_INPUTS: tuple[TableSpec, ...] = (TRAINING_EXAMPLES, ITEM_FEATURES, USER_INDEX, ITEM_INDEX, CATEGORY_INDEX)
OPTIONAL_INPUTS: tuple[TableSpec, ...] = (INTERACTIONS, USER_HISTORY, CATEGORY_TRANSFER)
INPUTS: tuple[TableSpec, ...] = REQUIRED_INPUTS + OPTIONAL_INPUTS
OUTPUTS: tuple[TableSpec, ...] = (RUNS,)   # plus the checkpoint and the MLflow run
# Config keys that say where to write or log, not what to train: left out of the run id.
_NOT_IN_RUN_ID = ("checkpoint_dir", "tracking_uri", "local_mode")


class TrainingFailedError(RuntimeError):
    """A training rank raised; the message holds that rank's error and traceback."""


# Bumped when the model or trainer code changes what the same config and inputs train, so that
# a finished run of an older release is trained again rather than reused (or resumed).
# 2: user id rows start at zero with item biases. 3: the softmax's sampled pool has no repeats.
MODEL_LOGIC_VERSION = 3


def run_id_for(cfg: JobConfig, input_versions: dict[str, int]) -> str:
    """Deterministic id of a run: sha256 of what determines the model (features, model, train
    sections, minus output locations) and the pinned input versions. The same config on the
    same table versions is the same run, which is what makes automatic resume safe."""
    train = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in _NOT_IN_RUN_ID}
    if cfg.train.weight_average.kind is WeightAverageKind.NONE:   # ids of runs without one stay what they were
        del train["weight_average"]
    model = {k: v for k, v in cfg.model.model_dump(mode="json").items() if k not in DISTILL_KEYS}
    body = {"features": cfg.features.model_dump(mode="json"), "model": model,
            "train": train, "inputs": dict(sorted(input_versions.items()))}
    if MODEL_LOGIC_VERSION > 1:   # so ids of runs made before versioning stay what they were
        body["logic"] = MODEL_LOGIC_VERSION
    return digest(body, 20)


def checkpoint_root(cfg: JobConfig, lake: Lakehouse) -> Path:
    """``train.checkpoint_dir``, else ``<lakehouse root>/checkpoints``; a local (or mounted) path,
    because every rank and the driver read and write it as a file system."""
    root = cfg.train.checkpoint_dir or f"{lake.root}/checkpoints"
    parsed = urlparse(root)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"train.checkpoint_dir must be a path every rank can open (a local or mounted "
                         f"file system); got {root!r}. Set train.checkpoint_dir to a shared mount.")
    return Path(parsed.path if parsed.scheme else root).resolve()


def _pin(lake: Lakehouse, spec: TableSpec) -> InputTable | None:
    version = lake.version(spec)
    if version is None:
        return None
    return InputTable(name=spec.qualified, path=lake.path(spec), version=version,
                      files=tuple(lake.files(spec, version)), partition_by=tuple(spec.partition_by))


def _max_idx(lake: Lakehouse, table: InputTable, spec: TableSpec, column: str) -> int:
    value = lake.read(spec, table.version).agg(F.max(column)).first()[0]
    if value is None:
        raise ValueError(f"{spec.qualified} (version {table.version}) is empty: run `xrec features` first")
    return int(value)


def _targets(cfg: JobConfig, lake: Lakehouse, table: InputTable) -> list[int]:
    index = {r["category"]: int(r["category_idx"])
             for r in lake.read(CATEGORY_INDEX, table.version).collect()}   # one row per category
    if not cfg.train.target_categories:
        return sorted(index.values())
    unknown = [c for c in cfg.train.target_categories if c not in index]
    if unknown:
        raise ValueError(f"train.target_categories {unknown} are not in {CATEGORY_INDEX.qualified}; known "
                         f"categories (first 20): {sorted(index)[:20]}")
    return sorted(index[c] for c in cfg.train.target_categories)


def _sources(cfg: JobConfig, lake: Lakehouse, table: InputTable | None, targets: list[int],
             all_categories: list[int]) -> list[int]:
    from xrec_spark.model.transfer import choose_sources

    chosen: set[int] = set()
    if table is not None and cfg.train.target_categories:
        frame = lake.read(CATEGORY_TRANSFER, table.version).toPandas()   # <= categories^2 rows
        for srcs in choose_sources(frame, targets, cfg.train.source_top_n).values():
            chosen.update(srcs)
    # All categories are targets, or no transfer evidence: pretrain on everything.
    return sorted(chosen) if chosen else list(all_categories)


def build_spec(cfg: JobConfig, lake: Lakehouse, resume: ResumeMode = "auto", fail_at_step: int | None = None,
               fail_rank: int = 0) -> TrainSpec:
    """Pin the inputs and resolve everything the ranks need into a TrainSpec (reads only small
    dimension data on the driver: index maxima, category ids, the category-transfer matrix)."""
    inputs: dict[str, InputTable] = {}
    for spec, pinned in zip(INPUTS, each_table(INPUTS, lambda s: _pin(lake, s))):
        if pinned is None and spec in REQUIRED_INPUTS:
            raise TableNotFoundError(f"training needs {spec.qualified} at {lake.path(spec)}; run "
                                     "`xrec ingest` then `xrec features` first")
        if pinned is not None:
            inputs[spec.qualified] = pinned
    examples = inputs[TRAINING_EXAMPLES.qualified]
    if not examples.files:
        raise ValueError(f"{TRAINING_EXAMPLES.qualified} version {examples.version} has no rows: no positive "
                         "interaction fell in the train split. The temporal split (features.split) cuts at whole "
                         "days, so a lakehouse holding a single day of events has no train days: ingest more "
                         "history, set features.split dates, or check features.positive_min_value")
    if len(examples.files) < cfg.train.num_processes:
        log.warning("%s has %d files for %d processes: petastorm needs at least one row group per rank "
                    "(raise features.training_files)", TRAINING_EXAMPLES.qualified, len(examples.files),
                    cfg.train.num_processes)
    column = {USER_INDEX.qualified: "user_idx", ITEM_INDEX.qualified: "item_idx",
              CATEGORY_INDEX.qualified: "category_idx"}
    n_users, n_items, n_categories = each_table(
        (USER_INDEX, ITEM_INDEX, CATEGORY_INDEX), lambda s: _max_idx(lake, inputs[s.qualified], s, column[s.qualified]))
    sizes = Sizes(n_users=n_users, n_items=n_items, n_categories=n_categories)
    all_categories = list(range(1, sizes.n_categories + 1))
    targets = _targets(cfg, lake, inputs[CATEGORY_INDEX.qualified])
    sources = _sources(cfg, lake, inputs.get(CATEGORY_TRANSFER.qualified), targets, all_categories)
    category_sizes = None
    if cfg.model.task_weighting is TaskWeighting.SIZE:
        counts = {int(r[0]): int(r[1]) for r in lake.read(TRAINING_EXAMPLES, examples.version)
                  .groupBy("category_idx").count().collect()}
        category_sizes = tuple(counts.get(k, 0) for k in range(sizes.n_categories + 1))
    versions = {name: t.version for name, t in inputs.items()}
    run_id = run_id_for(cfg, versions)
    return TrainSpec(run_id=run_id, model_version=f"m-{run_id[:12]}",
                     run_dir=str(checkpoint_root(cfg, lake) / run_id), config=cfg.model_dump(mode="json"),
                     inputs=inputs, sizes=sizes, target_categories=tuple(targets),
                     source_categories=tuple(sources), category_sizes=category_sizes, resume=resume,
                     fail_at_step=fail_at_step, fail_rank=fail_rank)


def prepare_run_dir(spec: TrainSpec) -> RunPaths:
    """Create the run directory, clear old error files (and old state for a fresh run), write
    spec.json."""
    paths = RunPaths.of(spec.run_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(paths.errors, ignore_errors=True)
    if spec.resume == "never":
        for stale in (paths.state, paths.model, paths.student(spec.student_tag), paths.result):
            stale.unlink(missing_ok=True)
    spec.write(paths.spec)
    return paths


def rank_errors(paths: RunPaths) -> list[dict[str, Any]]:
    """Error records the ranks left, the earliest first (the root cause; the others usually
    report a peer that went away)."""
    if not paths.errors.is_dir():
        return []
    records = []
    for file in sorted(paths.errors.glob("rank-*.txt")):
        try:
            records.append(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            records.append({"rank": file.stem, "time": float("inf"), "error": f"unreadable error file: {e}",
                            "traceback": ""})
    return sorted(records, key=lambda r: r.get("time", float("inf")))


def failure_message(records: list[dict[str, Any]], run_dir: str) -> str:
    first = records[0]
    others = "".join(f"\n(rank {r['rank']} also failed: {r['error']})" for r in records[1:])
    return (f"training failed on rank {first['rank']}: {first['error']}\n"
            f"--- traceback of rank {first['rank']} ---\n{first['traceback']}"
            f"(error files under {run_dir}/errors){others}")


def launch(spec: TrainSpec, cfg: JobConfig) -> TrainResult:
    """Run ``train(spec)`` on ``train.num_processes`` ranks through TorchDistributor.

    A failing rank surfaces as :class:`TrainingFailedError` with its own message and traceback.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    paths = prepare_run_dir(spec)
    tc = cfg.train
    log.info("training run %s (%s) on %d process(es), local_mode=%s, use_gpu=%s, loader=%s; run dir %s",
             spec.run_id, spec.model_version, tc.num_processes, tc.local_mode, tc.use_gpu, tc.loader.value,
             paths.root)
    distributor = TorchDistributor(num_processes=tc.num_processes, local_mode=tc.local_mode, use_gpu=tc.use_gpu)
    try:
        output = distributor.run(train, spec)
    except (RuntimeError, PySparkException, Py4JError) as e:
        records = rank_errors(paths)
        if records:
            raise TrainingFailedError(failure_message(records, str(paths.root))) from e
        raise
    if isinstance(output, TrainResult):
        return output
    if paths.result.is_file():   # which process answers is not fixed; rank 0 wrote the file
        return TrainResult.read(paths.result)
    raise RuntimeError(f"training finished but returned {type(output).__name__} and wrote no {paths.result}")


@dataclass(frozen=True)
class TrainingReport:
    """What ``xrec train`` tells the user: where the model, the MLflow run and the row are."""

    result: TrainResult
    spec: TrainSpec
    tracking_uri: str
    mlflow_run_id: str
    runs_table: str
    runs_version: int
    reused: bool = False       # the same run (config + input versions) had already finished

    def format(self) -> str:
        """A short human summary for the job's output."""
        r, m = self.result, self.result.metrics
        metric = next((k for k in m if k.startswith("valid_")), None)
        best = f", best at {r.best_at['phase']} epoch {r.best_at['epoch']}" if r.best_at else ""
        lines = [
            ("already trained (same config and input versions), nothing to do: " if self.reused else "")
            + f"trained {r.model_version} (run {r.run_id}) on {r.world_size} process(es): {int(m.get('epochs', 0))} "
            f"epochs, {int(m.get('steps', 0))} steps, {m.get('samples_per_s', 0.0):,.0f} samples/s, final loss "
            f"{m.get('final_loss', float('nan')):.4f}"
            + (f", {metric} {m[metric]:.4f}{best}" if metric else " (no validation groups)"),
            f"model:      {r.model_path}",
            f"mlflow run: {self.mlflow_run_id} in {self.tracking_uri} (experiment xrec-train)",
            f"runs row:   {RUNS.qualified} run_id={r.run_id} at {self.runs_table} (version {self.runs_version})",
        ]
        if r.student is not None:
            sm = r.student["metrics"]
            valid = next((f", {k} {v:.4f}" for k, v in sm.items() if k.startswith("valid_")), "")
            lines.append(f"student:    {r.student['model_version']} ({int(sm.get('parameters', 0)):,} parameters vs "
                         f"{int(sm.get('teacher_parameters', 0)):,}), {int(sm.get('epochs', 0))} passes, "
                         f"{sm.get('samples_per_s', 0.0):,.0f} samples/s{valid}; serve it with "
                         "--set batch.model=student")
        return "\n".join(lines)


def finished_run(lake: Lakehouse, spec: TrainSpec) -> TrainingReport | None:
    """The report of this run when it already completed: its result file and its gold.runs row
    both exist. Re-running the job on unchanged inputs then launches nothing and writes nothing."""
    paths = RunPaths.of(spec.run_dir)
    found = run_params(lake, spec.run_id) if paths.result.exists() and paths.model.exists() else None
    if found is None:
        return None
    params = found[1]
    log.info("run %s already finished (result %s); reusing it", spec.run_id, paths.result)
    return TrainingReport(result=TrainResult.read(paths.result), spec=spec,
                          tracking_uri=params.get("tracking_uri", ""), mlflow_run_id=params.get("mlflow_run_id", ""),
                          runs_table=lake.path(RUNS), runs_version=lake.version(RUNS) or 0, reused=True)


def run_training(cfg: JobConfig, lake: Lakehouse, resume: ResumeMode = "auto",
                 fail_at_step: int | None = None, fail_rank: int = 0) -> TrainingReport:
    """The whole job: pin inputs, train on the ranks, then (after success only) log to MLflow,
    MERGE the gold.runs row and record the run in meta.job_log."""
    from xrec_spark.train import tracking

    started = datetime.now(timezone.utc)
    uri = tracking.tracking_uri(cfg, lake)   # checked before training, not after an hour of it
    spec = build_spec(cfg, lake, resume=resume, fail_at_step=fail_at_step, fail_rank=fail_rank)
    teacher_done = False
    if resume == "auto":
        finished = finished_run(lake, spec)
        if finished is not None and not (cfg.model.distill and run_params(lake, spec.student_run_id) is None):
            return finished
        # A finished teacher without this student: the ranks reload the teacher from its
        # checkpoint (no epoch runs) and fit only the student.
        teacher_done = finished is not None
    store = tracking.open_store_in_background(uri)
    try:
        result = launch(spec, cfg)
    except TrainingFailedError as e:
        store.join()
        tracking.log_mlflow_failure(uri, spec, str(e))
        raise
    store.join()
    mlflow_id = tracking.log_mlflow(uri, spec, result)
    extra = {"mlflow_run_id": mlflow_id, "tracking_uri": uri}
    if result.student is not None:
        extra["student_mlflow_run_id"] = tracking.log_mlflow_student(uri, spec, result, mlflow_id)
    finished = datetime.now(timezone.utc)
    runs_version = tracking.write_runs_row(lake, spec, result, cfg.fingerprint(), started, finished, extra,
                                           teacher=not teacher_done)
    summary = {"model_version": spec.model_version, "model_path": result.model_path, **extra,
               "metrics": result.metrics}
    with JobRun(lake, JOB, spec.run_id, started_at=started) as job_run:
        job_run.record(spec.input_versions(), {RUNS.qualified: runs_version}, summary)
    return TrainingReport(result=result, spec=spec, tracking_uri=uri, mlflow_run_id=mlflow_id,
                          runs_table=lake.path(RUNS), runs_version=runs_version)
