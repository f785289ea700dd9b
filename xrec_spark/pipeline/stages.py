"""The ordered registry of the suite's stages: one place that says what runs, in which order,
and which tables each stage reads and writes.

A :class:`Stage` is a name, the job function it calls (the same one its own ``xrec <job>``
runs), and the input and output tables that job module declares (``INPUTS`` / ``OUTPUTS``).
Running a stage gives a :class:`Summary`: the job's own result and its human ``lines()``.
``jobs/demo.py`` runs them all, the nightly (:mod:`xrec_spark.pipeline.nightly`) runs the first
six with its restart markers, and the quality bench (:mod:`xrec_spark.pipeline.quality`) runs
them with its trained baselines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, Callable

from xrec_spark.batch import export, generate, showcase
from xrec_spark.config import JobConfig
from xrec_spark.eval import evaluate, report
from xrec_spark.features import build
from xrec_spark.ingest import run as ingest
from xrec_spark.tables import Lakehouse, TableSpec
from xrec_spark.train import launch


@dataclass(frozen=True)
class Context:
    """What every stage gets: the lakehouse, the config, the run date of the candidates, and the
    model to serve and evaluate (None: the latest in gold.runs)."""

    lake: Lakehouse
    cfg: JobConfig
    run_date: date
    model_version: str | None = None

    def with_model(self, model_version: str | None) -> "Context":
        return replace(self, model_version=model_version)


@dataclass(frozen=True)
class Summary:
    """One stage's outcome: the job's own result object and the lines it prints."""

    result: Any
    text: tuple[str, ...]
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return list(self.text)


@dataclass(frozen=True)
class Stage:
    """One stage: ``name`` (its id), ``title`` (how the demo announces it), the job call, and
    the tables the job module declares it reads and writes."""

    name: str
    title: str
    job: Callable[[Context], tuple[Any, list[str]]]
    inputs: tuple[TableSpec, ...]
    outputs: tuple[TableSpec, ...]

    def run(self, ctx: Context) -> Summary:
        started = time.perf_counter()
        result, lines = self.job(ctx)
        return Summary(result, tuple(lines), time.perf_counter() - started)


def _ingest(ctx: Context) -> tuple[Any, list[str]]:
    result = ingest.run_ingest(ctx.lake.spark, ctx.lake, ctx.cfg)
    return result, result.lines()


def _features(ctx: Context) -> tuple[Any, list[str]]:
    result = build.build_features(ctx.lake.spark, ctx.lake, ctx.cfg)
    return result, result.format().splitlines()


def _train(ctx: Context) -> tuple[Any, list[str]]:
    result = launch.run_training(ctx.cfg, ctx.lake)
    return result, result.format().splitlines()


def _embeddings(ctx: Context) -> tuple[Any, list[str]]:
    result = export.export_embeddings(ctx.lake, ctx.cfg, ctx.model_version)
    return result, [result.format()]


def _candidates(ctx: Context) -> tuple[Any, list[str]]:
    result = generate.generate_candidates(ctx.lake, ctx.cfg, ctx.run_date, ctx.model_version)
    return result, [result.format()]


def _evaluate(ctx: Context) -> tuple[Any, list[str]]:
    cfg = ctx.cfg
    if ctx.model_version is not None:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"model_version": ctx.model_version})})
    result = evaluate.evaluate(ctx.lake, cfg)
    return result, result.format(cfg.eval.ks).splitlines()


def _report(ctx: Context) -> tuple[Any, list[str]]:
    result = report.build_report(ctx.lake, ctx.cfg)
    return result, [result.format()]


def _sample(ctx: Context) -> tuple[Any, list[str]]:
    lines = showcase.cross_category_sample(ctx.lake, ctx.run_date, k=5, users=2)
    return lines, lines


# In order: each stage reads only what the ones before it (or earlier runs) wrote.
STAGES: tuple[Stage, ...] = (
    Stage("ingest", "ingest", _ingest, ingest.INPUTS, ingest.OUTPUTS),
    Stage("features", "features", _features, build.INPUTS, build.OUTPUTS),
    Stage("train", "train", _train, launch.INPUTS, launch.OUTPUTS),
    Stage("embeddings", "embeddings", _embeddings, export.INPUTS, export.OUTPUTS),
    Stage("candidates", "candidates", _candidates, generate.INPUTS, generate.OUTPUTS),
    Stage("evaluate", "evaluate", _evaluate, evaluate.INPUTS, evaluate.OUTPUTS),
    Stage("report", "report", _report, report.INPUTS, report.OUTPUTS),
    Stage("sample", "sample recommendations (a category the user never touched)", _sample, showcase.INPUTS,
          showcase.OUTPUTS),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    """The registered stage called ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")


def stages_until(last: str) -> tuple[Stage, ...]:
    """The stages from the first through ``last``, in order."""
    return STAGES[:STAGE_NAMES.index(stage(last).name) + 1]


def listing() -> list[str]:
    """One block per stage: its name, the tables it reads and the tables it writes."""
    out = []
    for s in STAGES:
        out.append(f"{s.name}")
        out.append(f"  reads:  {', '.join(t.qualified for t in s.inputs) or '-'}")
        out.append(f"  writes: {', '.join(t.qualified for t in s.outputs) or '- (no table)'}")
    out.append("every stage may also read gold.runs (which model) and meta.job_log (what ran before), "
               "and the jobs record their runs in meta.job_log")
    return out
