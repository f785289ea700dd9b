"""``xrec evaluate``: rank with every system, score, summarise, write gold.metrics.

One job-level function, :func:`evaluate`. It pins its inputs (Delta versions), builds the
evaluation groups of ``eval.split`` from silver.interactions, ranks the groups' (user,
category) pairs with each baseline and the model (full ranking within the category, seen items
excluded), computes per-group metrics in Spark, collects them (small: systems x groups x
metrics) for the stratified, paired bootstrap, adds item coverage and popularity bias, and
writes everything to gold.metrics with ``replaceWhere eval_id = ...``. The eval_id is derived
from what determines the numbers (split, systems, model versions, input versions, eval config),
so re-running on the same inputs replaces its own rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xrec_spark.config import TRAINED_BASELINES, EvalConfig, JobConfig
from xrec_spark.eval import baselines as B
from xrec_spark.eval import columns as C
from xrec_spark.eval.bootstrap import is_difference, summarize
from xrec_spark.eval.metrics import coverage_and_popularity, group_metrics, ranked_lists, relevant_groups
from xrec_spark.eval.model_rankings import model_rankings
from xrec_spark.lineage import JobRun, ModelRun, digest, model_run, utc_now
from xrec_spark.tables import (
    CANDIDATES, CATEGORY_INDEX, INTERACTIONS, ITEM_EMBEDDINGS, ITEM_FEATURES, METRICS, RUNS, USER_EMBEDDINGS, USER_HISTORY,
    Lakehouse, sql_string)

log = logging.getLogger(__name__)

JOB = "evaluate"
MODEL = "model"
CANDIDATES_SYSTEM = "candidates"
METRICS_SPLIT = "split"   # gold.metrics column: the split a row was measured on
DATA_INPUTS = (INTERACTIONS, ITEM_FEATURES, CATEGORY_INDEX)
MODEL_INPUTS = (USER_HISTORY, ITEM_EMBEDDINGS, USER_EMBEDDINGS, RUNS)
# The model's tables are read with eval.include_model, gold.candidates with eval.include_candidates.
INPUTS = (*DATA_INPUTS, *MODEL_INPUTS, CANDIDATES)
OUTPUTS = (METRICS,)


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation wrote (``rows`` = the gold.metrics rows as pandas)."""

    eval_id: str
    split: str
    systems: list[str]
    model_versions: dict[str, str]
    rows: pd.DataFrame
    # Every baseline point tried on valid (system "als[...]" / "ease[...]", valid_ndcg, params).
    als_grid: list[dict[str, Any]] = field(default_factory=list)
    input_versions: dict[str, int] = field(default_factory=dict)
    output_versions: dict[str, int] = field(default_factory=dict)

    def table(self, metric: str = C.NDCG, k: int = 10, category: str = C.ALL) -> pd.DataFrame:
        """system x slice of ``metric@k`` as "value [low, high] (groups)" strings."""
        sel = self.rows[(self.rows[C.METRIC] == metric) & (self.rows[C.K] == k)
                        & (self.rows[C.CATEGORY_NAME] == category) & (self.rows[METRICS_SPLIT] == self.split)]
        cells = sel.assign(cell=[f"{v:.4f} [{lo:.4f}, {hi:.4f}] (n={n})" for v, lo, hi, n in
                                 zip(sel[C.VALUE], sel[C.CI_LOW], sel[C.CI_HIGH], sel[C.GROUPS])])
        return cells.pivot(index=C.SYSTEM, columns=C.SLICE, values="cell")

    def format(self, ks: list[int]) -> str:
        """The job's summary: systems, model versions and NDCG@10 (else the smallest K) by slice."""
        k = 10 if 10 in ks else min(ks)
        lines = [f"eval {self.eval_id} ({self.split}): systems {', '.join(self.systems)}"]
        if self.model_versions:
            lines.append("models: " + ", ".join(f"{s}={v}" for s, v in self.model_versions.items()))
        lines.append(f"NDCG@{k}, all categories (micro), value [95% CI] (groups):")
        lines.append(self.table(C.NDCG, k).to_string())
        return "\n".join(lines)


def eval_id_for(cfg: JobConfig, systems: list[str], model_versions: dict[str, str],
                inputs: dict[str, int]) -> str:
    """``<split>-<sha256[:16]>`` of everything that determines the numbers (not gold.runs'
    version: a new unrelated training run does not change an evaluation; not where the report
    goes or how many users a ranking call takes), or ``eval.eval_id`` when set."""
    if cfg.eval.eval_id:
        return cfg.eval.eval_id
    eval_cfg = {k: v for k, v in cfg.eval.model_dump(mode="json").items()
                if k not in ("report_dir", "eval_id", "users_per_block")}
    body = {"systems": sorted(systems), "models": dict(sorted(model_versions.items())),
            "inputs": {k: v for k, v in sorted(inputs.items()) if k != RUNS.qualified}, "eval": eval_cfg}
    return f"{cfg.eval.split.value}-{digest(body, 16)}"


def _baseline_rankings(name: str, interactions: DataFrame, features: DataFrame, pairs: DataFrame,
                       seen: DataFrame, cfg: JobConfig, k: int) -> tuple[DataFrame, list[dict[str, Any]]]:
    """A baseline's rankings of ``pairs`` and, for a tuned one, every point it tried on valid
    (``system`` = ``name[param=value,...]``, ``valid_ndcg``, ``groups``, the params)."""
    block = cfg.eval.users_per_block
    if name == B.POP_CATEGORY:
        return B.popularity_category(pairs, features, seen, k, block), []
    if name == B.POP_GLOBAL:
        return B.popularity_global(pairs, features, seen, k, block), []
    if name == B.ALS_NAME:
        factors, grid = B.tune_als(interactions, features, cfg.eval, block)
        table = [{"system": f"als[rank={p.rank},reg={p.reg_param},alpha={p.alpha}]", "rank": p.rank,
                  "reg_param": p.reg_param, "alpha": p.alpha, "max_iter": cfg.eval.als_max_iter,
                  "valid_ndcg": s, "groups": n} for p, s, n in grid]
        return B.als_rankings(factors, pairs, features, seen, k, block), table
    if name == B.EASE_NAME:
        fit = B.tune_ease(interactions, features, cfg.eval)
        table = [{"system": f"ease[lambda={lam},items={len(fit.data.items)}]", "lambda": lam,
                  "items": len(fit.data.items), "valid_ndcg": s, "groups": n,
                  "seconds": round(fit.seconds, 1), "peak_rss_gib": round(fit.peak_rss_gib, 2)}
                 for lam, s, n in fit.grid]
        return B.ease_rankings(fit, pairs, seen, k), table
    if name == B.DAE_NAME:
        dae = B.tune_dae(interactions, features, cfg.eval)
        table = [{"system": f"dae[hidden={h},epoch={e},items={len(dae.data.items)}]", "hidden": h, "epoch": e,
                  "items": len(dae.data.items), "valid_ndcg": s, "groups": n, "seconds": round(dae.seconds, 1)}
                 for h, e, s, n in dae.grid]
        return B.dae_rankings(dae, pairs, seen, k), table
    raise ValueError(f"eval.baselines: {name!r} has no ranking function here")


def _metric_rows(summary: pd.DataFrame, coverage: pd.DataFrame, names: dict[int, str]) -> pd.DataFrame:
    """Both result frames in gold.metrics' column layout (category as natural name)."""
    ranks = summary.assign(**{C.CATEGORY_NAME: summary[C.CATEGORY_NAME].map(
        lambda c: c if c in (C.ALL, C.MACRO) else names.get(int(c), str(c)))})
    cov = coverage.assign(**{
        C.CATEGORY_NAME: coverage[C.CATEGORY].map(lambda c: C.ALL if pd.isna(c) else names.get(int(c), str(int(c)))),
        C.SLICE: C.ALL, C.CI_LOW: float("nan"), C.CI_HIGH: float("nan")}).drop(columns=[C.CATEGORY])
    return pd.concat([ranks, cov], ignore_index=True)


def _opt_float(x: Any) -> float | None:
    """None for missing values (None, NaN, pandas NA), else the float."""
    return None if x is None or pd.isna(x) else float(x)


def write_metrics(lake: Lakehouse, rows: pd.DataFrame, eval_id: str, split: str,
                  model_versions: dict[str, str], inputs: dict[str, int]) -> None:
    """Replace gold.metrics rows of ``eval_id`` with ``rows``."""
    today = utc_now().date()
    records = [(eval_id, today, model_versions.get(r[C.SYSTEM]), r[C.SYSTEM], r.get(METRICS_SPLIT, split),
                str(r[C.CATEGORY_NAME]), r[C.SLICE], r[C.METRIC],
                None if pd.isna(r[C.K]) else int(r[C.K]), _opt_float(r[C.VALUE]), int(r[C.GROUPS]),
                _opt_float(r[C.CI_LOW]), _opt_float(r[C.CI_HIGH]), dict(inputs))
               for r in rows.to_dict("records")]
    df = lake.spark.createDataFrame(records, METRICS.schema)
    lake.overwrite(METRICS, df, replace_where=f"eval_id = {sql_string(eval_id, 'eval_id')}", job=JOB)


def evaluate(lake: Lakehouse, cfg: JobConfig) -> EvalResult:
    """The whole evaluation job (see module docstring); returns what it wrote."""
    started = datetime.now(timezone.utc)
    ev = cfg.eval
    split = ev.split.value
    inputs = lake.versions(DATA_INPUTS + (MODEL_INPUTS if ev.include_model or _trained(ev) else ())
                           + ((CANDIDATES,) if ev.include_candidates else ()))
    # Everything that can fail without ranking is looked up before the baselines (the ALS
    # search takes minutes): the models' gold.runs rows, the served candidates, the groups.
    runs: list[tuple[str, ModelRun]] = [(system, model_run(lake, version)) for system, version in _model_systems(cfg)]
    candidates = served_candidates(lake) if ev.include_candidates else None
    interactions = lake.read(INTERACTIONS, inputs.get(INTERACTIONS.qualified))
    features = lake.read(ITEM_FEATURES, inputs.get(ITEM_FEATURES.qualified))
    names = {int(r["category_idx"]): r["category"] for r in
             lake.read(CATEGORY_INDEX, inputs.get(CATEGORY_INDEX.qualified)).collect()}
    k_max = max(ev.ks)
    groups = relevant_groups(interactions, split).persist(StorageLevel.MEMORY_AND_DISK)
    if groups.isEmpty():
        groups.unpersist()
        raise ValueError(f"silver.interactions has no {split} positives: nothing to evaluate "
                         "(check features.split fractions/dates)")
    pairs = groups.where(F.col(C.SLICE) == C.ALL).select(C.USER, C.CATEGORY)
    seen = B.seen_before(interactions, split)

    parts: list[DataFrame] = []
    als_grid: list[dict[str, Any]] = []
    handles = []
    for baseline in ev.baselines:
        if baseline in TRAINED_BASELINES:
            continue   # ranked with its model below
        ranking, grid = _baseline_rankings(baseline.value, interactions, features, pairs, seen, cfg, k_max)
        parts.append(ranking)
        als_grid += grid
    model_versions: dict[str, str] = {}
    for system, run in runs:
        ranking, counts, handle = model_rankings(lake, cfg, run, pairs, seen, k_max, system)
        log.info("%s = model %s: %s", system, run.model_version, counts)
        parts.append(ranking)
        handles.append(handle)
        model_versions[system] = run.model_version
    if candidates is not None:
        parts.append(candidates)
    # Not empty: the config has at least one system (EvalConfig._systems_to_evaluate).
    rankings = parts[0]
    for part in parts[1:]:
        rankings = rankings.unionByName(part)
    rankings = rankings.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        tick = time.perf_counter()
        n_lists = rankings.count()
        log.info("ranked %d rows for %d systems in %.1f s", n_lists, len(parts), time.perf_counter() - tick)
        for handle in handles:
            handle.release()
        per_group = group_metrics(ranked_lists(rankings), groups, ev.ks).toPandas()
        if per_group.empty:
            raise ValueError(f"no system ranked any of the {split} groups: every ranking came back empty")
        log.info("per-group metrics: %d rows in %.1f s", len(per_group), time.perf_counter() - tick)
        references = [MODEL] if MODEL in set(per_group[C.SYSTEM]) else []
        summary = summarize(per_group, ev.bootstrap_samples, ev.seed, paired_with=references)
        log.info("bootstrap (%d samples) done at %.1f s", ev.bootstrap_samples, time.perf_counter() - tick)
        coverage = coverage_and_popularity(rankings, pairs, features, ev.ks).toPandas()
        log.info("coverage done at %.1f s", time.perf_counter() - tick)
    finally:
        for handle in handles:
            handle.release()
        rankings.unpersist()
        groups.unpersist()
    systems = sorted(s for s in summary[C.SYSTEM].unique() if not is_difference(s))
    eval_id = eval_id_for(cfg, systems, model_versions, inputs)
    rows = _metric_rows(summary, coverage, names).assign(**{METRICS_SPLIT: split})
    if als_grid:
        rows = pd.concat([rows, _grid_rows(als_grid, ev.tune_k)], ignore_index=True)
    write_metrics(lake, rows, eval_id, split, model_versions, inputs)
    outputs = lake.versions(OUTPUTS)
    with JobRun(lake, JOB, eval_id, started_at=started) as job_run:
        job_run.record(inputs, outputs, {"eval_id": eval_id, "split": split, "systems": systems,
                                         "models": model_versions, "ranked_rows": n_lists, "als_grid": als_grid})
    return EvalResult(eval_id, split, systems, model_versions, rows, als_grid, inputs, outputs)


def _grid_rows(grid: list[dict[str, Any]], k: int) -> pd.DataFrame:
    """Baseline tuning results as valid-split rows (system ``als[rank=..,reg=..,alpha=..]``,
    ``ease[lambda=..,items=..]``)."""
    return pd.DataFrame([{
        C.SYSTEM: g["system"], METRICS_SPLIT: C.VALID,
        C.CATEGORY_NAME: C.ALL, C.SLICE: C.ALL, C.METRIC: C.NDCG, C.K: k, C.VALUE: g["valid_ndcg"],
        C.GROUPS: int(g["groups"]), C.CI_LOW: float("nan"), C.CI_HIGH: float("nan")} for g in grid],
        columns=[C.SYSTEM, METRICS_SPLIT, C.CATEGORY_NAME, C.SLICE, C.METRIC, C.K, C.VALUE, C.GROUPS,
                 C.CI_LOW, C.CI_HIGH])


def served_candidates(lake: Lakehouse) -> DataFrame:
    """gold.candidates of the latest run_date as rankings of system ``candidates`` (the lists the
    nightly job serves; pairs it did not generate score 0)."""
    candidates = lake.read(CANDIDATES)
    latest = candidates.agg(F.max("run_date")).first()[0]
    if latest is None:
        raise ValueError("eval.include_candidates is true but gold.candidates is empty: run `xrec candidates`")
    return (candidates.where(F.col("run_date") == F.lit(latest))
            .select(F.lit(CANDIDATES_SYSTEM).alias(C.SYSTEM), C.USER, C.CATEGORY, C.RANK, C.ITEM, C.SCORE))


def _trained(ev: EvalConfig) -> bool:
    return any(b in TRAINED_BASELINES for b in ev.baselines)


def _model_systems(cfg: JobConfig) -> list[tuple[str, str | None]]:
    """(system name, model_version or None = latest) of every model-based system; a trained
    baseline's version is in ``eval.baseline_versions`` (the config checks it is there)."""
    out: list[tuple[str, str | None]] = []
    if cfg.eval.include_model:
        out.append((MODEL, cfg.eval.model_version))
    out += [(b.value, cfg.eval.baseline_versions[b]) for b in cfg.eval.baselines if b in TRAINED_BASELINES]
    return out
