"""Lineage: which model to use (gold.runs) and what every job run did (meta.job_log).

A job run is one meta.job_log row: ``job``, ``run_id``, ``run_key`` (what identifies the work:
a :func:`digest` of its inputs and config, a date, a model version...), the ``input_versions``
it read, the ``output_versions`` it left, a JSON ``summary`` and its start and end. This module
holds the one writer of that table (:meth:`JobRun.record`) and its one reader
(:func:`last_run`); :class:`JobRun` adds the clock and the skip rule every job shares:

    with JobRun(lake, "features", digest(payload)) as run:
        done = run.unchanged(outputs=lake.versions(OUTPUTS))
        if done is not None:
            return ...                          # same key, tables as that run left them
        ...
        run.record(inputs, outputs, summary)
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Mapping

from pyspark.sql import functions as F

from xrec_spark.tables import JOB_LOG, RUNS, Lakehouse

log = logging.getLogger(__name__)


def digest(payload: Any, length: int | None = None) -> str:
    """sha256 hex of ``payload`` as canonical JSON (sorted keys), cut to ``length`` characters:
    the run key of "same inputs and config -> same work"."""
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def utc_now() -> datetime:
    """Naive UTC timestamp (the sessions run in UTC; Delta stores timestamps without zone)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


# ----------------------------------------------------------------------------------- meta.job_log


@dataclass(frozen=True)
class JobRecord:
    """One meta.job_log row, its summary parsed."""

    job: str
    run_id: str
    run_key: str
    input_versions: dict[str, int]
    output_versions: dict[str, int]
    summary: dict[str, Any]
    started_at: datetime
    finished_at: datetime


def last_run(lake: Lakehouse, job: str, run_key: str | None = None,
             output: tuple[str, int] | None = None) -> JobRecord | None:
    """The latest recorded run of ``job`` (of that ``run_key``; that left table ``output[0]`` at
    version ``output[1]``, when given), or None."""
    if not lake.exists(JOB_LOG):
        return None
    rows = lake.read(JOB_LOG).where(F.col("job") == job)
    if run_key is not None:
        rows = rows.where(F.col("run_key") == run_key)
    if output is not None:
        rows = rows.where(F.col("output_versions")[output[0]] == int(output[1]))
    row = rows.orderBy(F.col("finished_at").desc()).first()
    if row is None:
        return None
    return JobRecord(row["job"], row["run_id"], row["run_key"], dict(row["input_versions"] or {}),
                     dict(row["output_versions"] or {}), json.loads(row["summary"]) if row["summary"] else {},
                     row["started_at"], row["finished_at"])


class JobRun:
    """One run of a job: its key, id and clock, the skip rule, and its meta.job_log row.

    Nothing is written unless :meth:`record` is called, so a run that fails leaves no row and
    the next one does the work again. Leaving the ``with`` block logs how long the run took.
    ``started_at``: when the work began, for a job whose key is known only part-way (ingest
    keys on the files it listed); default now.
    """

    def __init__(self, lake: Lakehouse, job: str, run_key: str, run_id: str | None = None,
                 started_at: datetime | None = None) -> None:
        if not job or not run_key:
            raise ValueError(f"a job run needs a job name and a run key; got job={job!r}, run_key={run_key!r}")
        if started_at is not None and started_at.tzinfo is None:
            raise ValueError(f"started_at must carry its time zone (UTC); got the naive {started_at}")
        self.lake, self.job, self.run_key = lake, job, run_key
        self.run_id = run_id or uuid.uuid4().hex
        self.started_at = started_at or datetime.now(timezone.utc)
        self.recorded: JobRecord | None = None

    def __enter__(self) -> "JobRun":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        state = "failed" if kind is not None else "recorded" if self.recorded else "done, not recorded"
        log.info("%s run %s (key %s) %s after %.1f s", self.job, self.run_id, self.run_key, state, self.seconds)

    @property
    def seconds(self) -> float:
        """Wall time since the run started."""
        return (datetime.now(timezone.utc) - self.started_at).total_seconds()

    def unchanged(self, inputs: Mapping[str, int] | None = None,
                  outputs: Mapping[str, int] | None = None) -> JobRecord | None:
        """The latest recorded run of this job and key when it read the same ``inputs`` and left
        the tables at ``outputs`` (each compared when given): its work is still there, this run
        may skip it. None: do the work."""
        previous = last_run(self.lake, self.job, self.run_key)
        if previous is None:
            return None
        if inputs is not None and previous.input_versions != dict(inputs):
            return None
        if outputs is not None and previous.output_versions != dict(outputs):
            return None
        return previous

    def record(self, input_versions: Mapping[str, int], output_versions: Mapping[str, int],
               summary: Mapping[str, Any]) -> JobRecord:
        """Append this run's meta.job_log row (once; after its work succeeded)."""
        if self.recorded is not None:
            raise RuntimeError(f"{self.job} run {self.run_id} is already recorded in {JOB_LOG.qualified}")
        record = JobRecord(self.job, self.run_id, self.run_key, {k: int(v) for k, v in input_versions.items()},
                           {k: int(v) for k, v in output_versions.items()}, dict(summary), self.started_at,
                           datetime.now(timezone.utc))
        row = (record.job, record.run_id, record.run_key, record.input_versions, record.output_versions,
               json.dumps(record.summary, default=str, sort_keys=True), record.started_at, record.finished_at)
        # Append, not MERGE: run ids are unique, and a one-row MERGE costs several Spark jobs.
        self.lake.append(JOB_LOG, self.lake.spark.createDataFrame([row], JOB_LOG.schema), job=self.job)
        self.recorded = record
        return record


# ----------------------------------------------------------------------------------- gold.runs


class NoModelError(RuntimeError):
    """gold.runs holds no trained model (or not the one asked for)."""


@dataclass(frozen=True)
class ModelRun:
    """One row of gold.runs: a trained model and where its checkpoint is."""

    run_id: str
    model_version: str
    checkpoint_path: str
    finished_at: datetime
    input_versions: dict[str, int]


def model_run(lake: Lakehouse, model_version: str | None = None, role: str = "teacher") -> ModelRun:
    """The gold.runs row of ``model_version``, or when None the most recently finished one of
    ``role``: ``teacher`` (a trained model; rows written before roles existed are teachers) or
    ``student`` (a model distilled from one, ``model.distill``)."""
    if not lake.exists(RUNS):
        raise NoModelError(f"table {RUNS.qualified} does not exist: train a model first (xrec train)")
    runs = lake.read(RUNS)
    if model_version is not None:
        runs = runs.where(F.col("model_version") == model_version)
    else:
        runs = runs.where(F.coalesce(F.get_json_object("params", "$.role"), F.lit("teacher")) == role)
    row = runs.orderBy(F.col("finished_at").desc(), F.col("run_id").desc()).first()
    if row is None:
        if model_version is None and role != "teacher":
            raise NoModelError(f"{RUNS.qualified} has no {role} model: train one with model.distill=true "
                               "(xrec train --set model.distill=true) or serve the teacher (batch.model=teacher)")
        if model_version is None:
            raise NoModelError(f"{RUNS.qualified} has no rows: train a model first (xrec train)")
        known = [r["model_version"] for r in lake.read(RUNS).select("model_version").distinct().limit(10).collect()]
        raise NoModelError(f"{RUNS.qualified} has no model_version {model_version!r}; known (up to 10): {known}")
    return ModelRun(row["run_id"], row["model_version"], row["checkpoint_path"], row["finished_at"],
                    dict(row["input_versions"] or {}))


def run_params(lake: Lakehouse, run_id: str) -> tuple[str, dict[str, Any]] | None:
    """(model_version, params as a dict) of gold.runs row ``run_id``; None when there is none."""
    if not lake.exists(RUNS):
        return None
    row = lake.read(RUNS).where(F.col("run_id") == run_id).select("model_version", "params").first()
    return None if row is None else (row["model_version"], json.loads(row["params"] or "{}"))


def student_of(lake: Lakehouse, model_version: str) -> str | None:
    """model_version of the latest student distilled from ``model_version``, or None."""
    if not lake.exists(RUNS):
        return None
    row = (lake.read(RUNS).where((F.get_json_object("params", "$.role") == "student")
                                 & (F.get_json_object("params", "$.parent_model_version") == model_version))
           .orderBy(F.col("finished_at").desc(), F.col("run_id").desc()).select("model_version").first())
    return None if row is None else row["model_version"]


def latest_model_version(lake: Lakehouse) -> str | None:
    """model_version of the most recently finished run, or None when there is none."""
    try:
        return model_run(lake).model_version
    except NoModelError:
        return None
