"""Lineage for the batch jobs: which model to use (gold.runs) and run markers (meta.job_log).

A marker is a meta.job_log row: ``job``, ``run_key`` (for the nightly: ``<date>:<step>``),
the ``input_versions`` the step read and the ``output_versions`` it left. A step whose latest
marker has the same input versions as now has nothing new to do.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from pyspark.sql import functions as F

from xrec_spark.tables import JOB_LOG, RUNS, Lakehouse

_SAFE_LITERAL = re.compile(r"^[A-Za-z0-9._:+\-]+$")


class NoModelError(RuntimeError):
    """gold.runs holds no trained model (or not the one asked for)."""


def sql_string(value: str, what: str) -> str:
    """``value`` as a quoted SQL string literal for a replaceWhere predicate.

    Only ids made of letters, digits and ``. _ : + -`` are accepted, so a predicate can never be
    widened by a quote in the value.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string; got {type(value).__name__}")
    if not _SAFE_LITERAL.match(value):
        raise ValueError(f"{what} {value!r} may only hold letters, digits and . _ : + -")
    return f"'{value}'"


@dataclass(frozen=True)
class ModelRun:
    """One row of gold.runs: a trained model and where its checkpoint is."""

    run_id: str
    model_version: str
    checkpoint_path: str
    finished_at: datetime
    input_versions: dict[str, int]


def model_run(lake: Lakehouse, model_version: str | None = None) -> ModelRun:
    """The gold.runs row of ``model_version``, or the most recently finished one when None."""
    if not lake.exists(RUNS):
        raise NoModelError(f"table {RUNS.qualified} does not exist: train a model first (xrec train)")
    runs = lake.read(RUNS)
    if model_version is not None:
        runs = runs.where(F.col("model_version") == model_version)
    row = runs.orderBy(F.col("finished_at").desc(), F.col("run_id").desc()).first()
    if row is None:
        if model_version is None:
            raise NoModelError(f"{RUNS.qualified} has no rows: train a model first (xrec train)")
        known = [r["model_version"] for r in lake.read(RUNS).select("model_version").distinct().limit(10).collect()]
        raise NoModelError(f"{RUNS.qualified} has no model_version {model_version!r}; known (up to 10): {known}")
    return ModelRun(row["run_id"], row["model_version"], row["checkpoint_path"], row["finished_at"],
                    dict(row["input_versions"] or {}))


def latest_model_version(lake: Lakehouse) -> str | None:
    """model_version of the most recently finished run, or None when there is none."""
    try:
        return model_run(lake).model_version
    except NoModelError:
        return None


def record_job(lake: Lakehouse, job: str, run_key: str, input_versions: Mapping[str, int],
               output_versions: Mapping[str, int], summary: Mapping[str, Any], started_at: datetime) -> str:
    """Append one meta.job_log row; returns its run_id."""
    run_id = uuid.uuid4().hex
    row = (job, run_id, run_key, {k: int(v) for k, v in input_versions.items()},
           {k: int(v) for k, v in output_versions.items()}, json.dumps(dict(summary), default=str, sort_keys=True),
           started_at, utc_now())
    lake.append(JOB_LOG, lake.spark.createDataFrame([row], JOB_LOG.schema), job=job)
    return run_id


def last_marker(lake: Lakehouse, job: str, run_key: str) -> dict[str, Any] | None:
    """The latest meta.job_log row of (job, run_key) as a dict, or None."""
    if not lake.exists(JOB_LOG):
        return None
    row = (lake.read(JOB_LOG).where((F.col("job") == job) & (F.col("run_key") == run_key))
           .orderBy(F.col("finished_at").desc()).first())
    if row is None:
        return None
    out = row.asDict()
    out["input_versions"] = dict(out["input_versions"] or {})
    out["output_versions"] = dict(out["output_versions"] or {})
    out["summary"] = json.loads(out["summary"]) if out["summary"] else {}
    return out


def utc_now() -> datetime:
    """Naive UTC timestamp (the sessions run in UTC; Delta stores timestamps without zone)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
