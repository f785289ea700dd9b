"""The nightly chain for one date, restartable step by step.

    ingest the day's files -> features -> retrain, adapt (few-shot: new categories, fresh items) or reuse the model
    -> embeddings -> candidates -> evaluation

The steps are the registered stages (:mod:`xrec_spark.pipeline.stages`) of those names, with
the train stage behind the retrain decision (:mod:`xrec_spark.pipeline.drift`); a category
new since the model's training with few train events adapts the model instead of retraining
it (:mod:`xrec_spark.pipeline.few_shot`). Every step
leaves a marker in meta.job_log (job ``nightly``, run_key ``<date>:<step>``) with the input
versions it saw (the stage's input tables; the model version for the steps that use one). A
step whose last marker for the date has the same input versions as now is skipped, so a run
killed midway and started again redoes only the steps after the last marker, and the steps it
redoes are idempotent themselves (MERGE on event ids, replaceWhere on model_version /
run_date, training resumes from its own checkpoints).

The day's files: a ``{date}`` in ``ingest.events.path`` / ``ingest.items.path`` is replaced by
the run date (``landing/{date}/`` -> ``landing/2024-05-01/``); without it the configured path
is read again and the MERGE on event ids keeps only what is new.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable

from xrec_spark.config import JobConfig, ServedModel
from xrec_spark.ingest.readers import list_source_files
from xrec_spark.lineage import JobRun, ModelRun, NoModelError, model_run, student_of
from xrec_spark.pipeline.drift import categories_added_since, new_events_since, retrain_reason
from xrec_spark.pipeline.few_shot import few_shot_plan, run_few_shot, trained_parent
from xrec_spark.pipeline.stages import Context, stage
from xrec_spark.tables import BRONZE_EVENTS, Lakehouse, TableSpec

log = logging.getLogger(__name__)

JOB = "nightly"
STEPS = ("ingest", "features", "train", "embeddings", "candidates", "evaluate")
# Steps whose work depends on the model in use: its version rides in their marker's inputs.
_MODEL_STEPS = ("train", "embeddings", "candidates", "evaluate")


class NightlyInterrupted(RuntimeError):
    """Raised by the ``fail_after`` test hook right after a step's marker is written."""


@dataclass(frozen=True)
class StepOutcome:
    step: str
    ran: bool                      # False: skipped, its marker for the date had the same inputs
    summary: dict[str, Any]
    seconds: float = 0.0


@dataclass
class NightlyResult:
    run_date: date
    model_version: str | None = None
    steps: list[StepOutcome] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"nightly {self.run_date}: model {self.model_version or '-'}"]
        for s in self.steps:
            detail = ", ".join(f"{k}={v}" for k, v in s.summary.items() if k != "reason" or v)
            state = f"ran ({s.seconds:.0f} s)" if s.ran else "skipped (done for these inputs)"
            out.append(f"  {s.step:<10} {state}" + (f": {detail}" if detail else ""))
        return out


def day_config(cfg: JobConfig, run_date: date) -> JobConfig:
    """``cfg`` with ``{date}`` in the ingest source paths replaced by ``run_date`` (ISO)."""
    ingest = cfg.ingest
    day = run_date.isoformat()
    updates: dict[str, Any] = {}
    for name in ("events", "items"):
        source = getattr(ingest, name)
        if source is not None and "{date}" in source.path:
            updates[name] = source.model_copy(update={"path": source.path.replace("{date}", day)})
    if not updates:
        return cfg
    return cfg.model_copy(update={"ingest": ingest.model_copy(update=updates)})


def step_inputs(step: str) -> tuple[TableSpec, ...]:
    """Tables whose versions decide whether ``step`` has new work: its stage's inputs, and for
    train bronze.events too (the retrain decision measures drift on it)."""
    if step not in STEPS:
        raise ValueError(f"unknown nightly step {step!r}; steps: {STEPS}")
    tables = stage(step).inputs
    return (BRONZE_EVENTS, *tables) if step == "train" else tables


def _model_key(version: str | None) -> dict[str, int]:
    # Marker inputs are {name: long}; the model version rides in the key.
    return {f"model:{version}": 1} if version else {}


class _Night:
    """State shared by the steps of one run (the config for the day, the model in use)."""

    def __init__(self, lake: Lakehouse, cfg: JobConfig, run_date: date) -> None:
        self.lake, self.cfg, self.run_date = lake, day_config(cfg, run_date), run_date
        self.model_version: str | None = None

    def inputs(self, step: str) -> dict[str, int]:
        if step == "ingest":
            return self._source_files()
        versions = self.lake.versions(step_inputs(step))
        if step == "train":
            latest = self._latest()
            return {**versions, **_model_key(latest.model_version if latest else None)}
        return {**versions, **_model_key(self._served(step))} if step in _MODEL_STEPS else versions

    def _source_files(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in ("events", "items"):
            source = getattr(self.cfg.ingest, name)
            if source is None:
                continue
            files = list_source_files(self.lake.spark, source.path, f"ingest.{name}.path")
            out.update({f"{name}.files": len(files), f"{name}.bytes": sum(f.size for f in files),
                        f"{name}.modified_ms": max(f.modified_ms for f in files)})
        return out

    def _latest(self) -> ModelRun | None:
        try:
            return model_run(self.lake)
        except NoModelError:
            return None

    def _run(self, step: str) -> Any:
        """The registered stage ``step`` on the day's config with the model in use."""
        return stage(step).run(Context(self.lake, self.cfg, self.run_date, self._served(step))).result

    def _served(self, step: str) -> str | None:
        """The model a step uses: the one in use, or for the export and candidates with
        ``batch.model=student`` its distilled student (the model itself when it has none, e.g. a
        few-shot version: said in the log)."""
        if step not in ("embeddings", "candidates") or self.cfg.batch.model is not ServedModel.STUDENT \
                or self.model_version is None:
            return self.model_version
        student = student_of(self.lake, self.model_version)
        if student is None:
            log.warning("batch.model=student but model %s has no distilled student (train with "
                        "model.distill=true); the %s step serves the model itself", self.model_version, step)
        return student or self.model_version

    # ----------------------------------------------------------------- the steps

    def ingest(self) -> dict[str, Any]:
        if self.cfg.ingest.events is None:
            return {"reason": "no ingest.events configured"}
        s = self._run("ingest")
        return {"inserted_events": s.inserted_events, "quarantined": sum(s.quarantined.values()),
                "files": len(s.files)}

    def features(self) -> dict[str, Any]:
        s = self._run("features")
        return {"features_run": s.run_id, "unchanged": s.skipped}

    def train(self) -> dict[str, Any]:
        latest = self._latest()
        reason = "no model yet"
        drift = None
        if latest is not None:
            # Age, drift and new categories count from the fully trained model: a few-shot
            # version only adds heads to it (pipeline.few_shot).
            trained = trained_parent(self.lake, latest)
            new, before = new_events_since(self.lake, trained.finished_at)
            drift = new / before if before else float("inf") if new else 0.0
            added = categories_added_since(self.lake, trained.input_versions)
            # Schedule or drift retrain everything; otherwise new categories (up to the few-shot
            # threshold) and items with their first train positives adapt the trained model.
            full = retrain_reason(trained.finished_at, self.run_date, drift, self.cfg.batch)
            plan = few_shot_plan(self.lake, self.cfg, trained, added) if full is None else None
            if plan is not None:
                few = run_few_shot(self.lake, self.cfg, plan)
                self.model_version = few.model_version
                return {"model_version": few.model_version, "retrained": False, "few_shot": few.summary(),
                        "drift": round(drift, 4)}
            reason = retrain_reason(trained.finished_at, self.run_date, drift, self.cfg.batch, added)
            if reason is None:
                self.model_version = latest.model_version
                return {"model_version": latest.model_version, "retrained": False, "drift": round(drift, 4)}
        report = self._run("train")
        self.model_version = report.spec.model_version
        return {"model_version": self.model_version, "retrained": True, "reason": reason,
                "drift": None if drift is None else round(drift, 4)}

    def embeddings(self) -> dict[str, Any]:
        self._version()
        r = self._run("embeddings")
        return {"items": r.items, "cold_items": r.cold_items, "user_pairs": r.user_pairs}

    def candidates(self) -> dict[str, Any]:
        self._version()
        r = self._run("candidates")
        return {"rows": r.rows, "model_pairs": r.model_pairs, "fallback_pairs": r.fallback_pairs}

    def evaluate(self) -> dict[str, Any]:
        self._version()
        r = self._run("evaluate")
        return {"eval_id": r.eval_id, "metric_rows": len(r.rows)}

    def _version(self) -> str:
        if self.model_version is None:
            raise RuntimeError("nightly: no model version after the train step; see its marker in meta.job_log")
        return self.model_version


def _run_step(night: _Night, step: str) -> StepOutcome:
    """Run ``step`` of ``night`` and leave its marker, or skip it when its marker for the date
    saw the same inputs."""
    inputs = night.inputs(step)
    with JobRun(night.lake, JOB, f"{night.run_date.isoformat()}:{step}") as marker:
        done = marker.unchanged(inputs=inputs)
        if done is not None:
            if step == "train":
                night.model_version = done.summary.get("model_version")
            log.info("nightly %s: %s already done for these inputs, skipped", night.run_date, step)
            return StepOutcome(step, False, done.summary)
        action: Callable[[], dict[str, Any]] = getattr(night, step)
        summary = action()
        marker.record(inputs, night.lake.versions(stage(step).outputs), summary)
        return StepOutcome(step, True, summary, marker.seconds)


def run_nightly(lake: Lakehouse, cfg: JobConfig, run_date: date, fail_after: str | None = None) -> NightlyResult:
    """Run (or finish) the nightly chain for ``run_date``; see the module docstring.

    ``fail_after``: name of a step after which to raise :class:`NightlyInterrupted` (its marker
    is written first), to test that a killed run finishes correctly when started again.
    """
    if not isinstance(run_date, date) or isinstance(run_date, datetime):
        raise TypeError(f"run_date must be a datetime.date; got {type(run_date).__name__}")
    if fail_after is not None and fail_after not in STEPS:
        raise ValueError(f"fail_after {fail_after!r} is not a step; steps: {STEPS}")
    night = _Night(lake, cfg, run_date)
    result = NightlyResult(run_date)
    for step in STEPS:
        result.steps.append(_run_step(night, step))
        if fail_after == step:
            raise NightlyInterrupted(f"nightly {run_date}: stopped after step {step!r} (fail_after)")
    result.model_version = night.model_version
    return result
