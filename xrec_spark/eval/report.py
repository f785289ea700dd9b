"""``xrec report``: a markdown report with PNG figures from gold.metrics and its lineage.

``report/index.md`` states the data (tables and versions, split dates, sizes), the seeds and
the model version; a summary table of model vs baselines per slice (value, 95% interval, group
count); the paired difference model − baseline per slice with its 95% bootstrap interval and a
verdict that calls it a win / loss only when that interval excludes 0;
coverage and popularity bias; per-category NDCG@10 bars; the category-transfer heatmap; and
the training curve (from the run's result file or its MLflow run, when either exists).
The page's text and layout are the Jinja2 template ``templates/report.md.j2``; this module
computes what goes into it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jinja2
import pandas as pd
from pyspark.sql import functions as F

from xrec_spark.config import JobConfig
from xrec_spark.eval import columns as C
from xrec_spark.eval import plots
from xrec_spark.eval.bootstrap import difference_system, is_difference, verdict
from xrec_spark.lineage import NoModelError, last_run, model_run
from xrec_spark.tables import CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS, METRICS, Lakehouse
from xrec_spark.tables import RUNS as RUNS_TABLE

log = logging.getLogger(__name__)

SLICE_ORDER = (C.WARM, C.CROSS_CATEGORY, C.COLD_USER, C.COLD_ITEM, C.ALL)
# Below this many groups a bootstrap interval says little: no verdict is given.
MIN_GROUPS_FOR_VERDICT = 20
MODEL_SYSTEMS = ("model",)
REPORT_TEMPLATE = "report.md.j2"   # in xrec_spark/eval/templates/, shipped as package data
INPUTS = (METRICS, INTERACTIONS, CATEGORY_INDEX, CATEGORY_TRANSFER, RUNS_TABLE)
OUTPUTS = ()   # files only: <eval.report_dir>/index.md and its figures


@dataclass(frozen=True)
class ReportResult:
    path: Path
    eval_id: str
    figures: list[Path]

    def format(self) -> str:
        return f"report of eval {self.eval_id}: {self.path} ({len(self.figures)} figures)"


def latest_eval_id(lake: Lakehouse) -> str:
    """eval_id of the most recent ``evaluate`` run in meta.job_log."""
    run = last_run(lake, "evaluate")
    if run is None:
        raise ValueError("no evaluation found in meta.job_log: run `xrec evaluate` first "
                         "(or pass --set eval.eval_id=<id> of gold.metrics)")
    return run.run_key


def _cell(r: pd.Series) -> str:
    if pd.isna(r[C.CI_LOW]):
        return f"{r[C.VALUE]:.4f} (n={int(r[C.GROUPS])})"
    return f"{r[C.VALUE]:.4f} [{r[C.CI_LOW]:.4f}, {r[C.CI_HIGH]:.4f}] (n={int(r[C.GROUPS])})"


def is_tuning_row(system: str) -> bool:
    """A baseline's valid-split tuning point (``als[...]``, ``ease[...]``), not a ranked system."""
    return "[" in system


def _ranked_systems(systems) -> list[str]:
    return sorted({s for s in systems if not is_difference(s) and not is_tuning_row(s)},
                  key=lambda s: (s not in MODEL_SYSTEMS, s))


def _select(metrics: pd.DataFrame, metric: str, k: int, split: str, category: str = C.ALL) -> pd.DataFrame:
    return metrics[(metrics[C.METRIC] == metric) & (metrics[C.K] == k) & (metrics[C.CATEGORY_NAME] == category)
                   & (metrics["split"] == split)]


def summary_table(metrics: pd.DataFrame, metric: str, k: int, split: str, category: str = C.ALL) -> str:
    """Markdown: systems x slices of ``metric@k`` for ``category`` (``all`` = micro, ``macro``)."""
    sel = _select(metrics, metric, k, split, category)
    slices = [s for s in SLICE_ORDER if s in set(sel[C.SLICE])]
    lines = ["| system | " + " | ".join(slices) + " |", "|---|" + "---|" * len(slices)]
    for system in _ranked_systems(sel[C.SYSTEM]):
        cells = []
        for s in slices:
            row = sel[(sel[C.SYSTEM] == system) & (sel[C.SLICE] == s)]
            cells.append(_cell(row.iloc[0]) if len(row) else "-")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def difference_cell(diff: float, low: float, high: float, groups: int) -> str:
    """``+0.0012 [-0.0003, +0.0025] no clear difference`` (verdict in bold when win / loss)."""
    if groups < MIN_GROUPS_FOR_VERDICT:
        said = f"too few groups (< {MIN_GROUPS_FOR_VERDICT})"
    else:
        said = verdict(low, high) or "no interval"
        said = f"**{said}**" if said in ("win", "loss") else said
    if pd.isna(low):
        return f"{diff:+.4f} {said}"
    return f"{diff:+.4f} [{low:+.4f}, {high:+.4f}] {said}"


def paired_table(metrics: pd.DataFrame, metric: str, k: int, split: str, model: str = "model") -> str:
    """Markdown: baselines x slices of the paired difference ``model − baseline`` of ``metric@k``,
    its 95% interval and verdict (win / loss when the interval excludes 0)."""
    sel = _select(metrics, metric, k, split)
    slices = [s for s in SLICE_ORDER if s in set(sel[C.SLICE])]
    others = [s for s in _ranked_systems(sel[C.SYSTEM]) if s != model
              and difference_system(model, s) in set(sel[C.SYSTEM])]
    if not others:
        return "_No paired differences in this evaluation (no model, or no baseline)._"
    lines = [f"| {model} − baseline | " + " | ".join(slices) + " |", "|---|" + "---|" * len(slices)]
    for other in others:
        cells = []
        for s in slices:
            row = sel[(sel[C.SYSTEM] == difference_system(model, other)) & (sel[C.SLICE] == s)]
            r = row.iloc[0] if len(row) else None
            cells.append("-" if r is None else difference_cell(r[C.VALUE], r[C.CI_LOW], r[C.CI_HIGH], int(r[C.GROUPS])))
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(metrics: pd.DataFrame, metric: str, k: int, split: str, model: str = "model") -> str:
    """Markdown: per slice, the model against the best baseline (by point value), judged by the
    paired difference's 95% bootstrap interval."""
    sel = _select(metrics, metric, k, split)
    if model not in set(sel[C.SYSTEM]):
        return "_No model rankings in this evaluation: baselines only._"
    lines = [f"| slice | model | best baseline | {model} − best [95% CI] and verdict |", "|---|---|---|---|"]
    for s in [x for x in SLICE_ORDER if x in set(sel[C.SLICE])]:
        part = sel[sel[C.SLICE] == s]
        mine = part[part[C.SYSTEM] == model].iloc[0]
        others = part[part[C.SYSTEM].isin([x for x in _ranked_systems(part[C.SYSTEM]) if x != model])]
        if others.empty:
            continue
        best = others.sort_values([C.VALUE, C.SYSTEM], ascending=[False, True]).iloc[0]
        diff = part[part[C.SYSTEM] == difference_system(model, best[C.SYSTEM])]
        if diff.empty:
            cell = "no paired difference recorded (re-run `xrec evaluate`)"
        else:
            d = diff.iloc[0]
            cell = difference_cell(d[C.VALUE], d[C.CI_LOW], d[C.CI_HIGH], int(d[C.GROUPS]))
        lines.append(f"| {s} | {mine[C.VALUE]:.4f} | {best[C.SYSTEM]} {best[C.VALUE]:.4f} | {cell} |")
    return "\n".join(lines)


def coverage_table(metrics: pd.DataFrame, k: int) -> str:
    sel = metrics[(metrics[C.CATEGORY_NAME] == C.ALL) & (metrics[C.K] == k)
                  & metrics[C.METRIC].isin([C.COVERAGE, C.POPULARITY_BIAS]) & ~metrics[C.SYSTEM].map(is_difference)]
    wide = sel.pivot_table(index=C.SYSTEM, columns=C.METRIC, values=C.VALUE, aggfunc="first")
    ref = metrics[(metrics[C.METRIC] == C.CATALOGUE_POPULARITY) & (metrics[C.CATEGORY_NAME] == C.ALL)]
    lines = [f"| system | item coverage@{k} | mean log(1+train count) of top-{k} |", "|---|---|---|"]
    for system, r in wide.iterrows():
        lines.append(f"| {system} | {r.get(C.COVERAGE, float('nan')):.4f} | {r.get(C.POPULARITY_BIAS, float('nan')):.3f} |")
    if len(ref):
        lines.append(f"| (catalogue) | 1.0000 | {ref[C.VALUE].iloc[0]:.3f} |")
    return "\n".join(lines)


def data_facts(lake: Lakehouse, versions: dict[str, int]) -> pd.DataFrame:
    """Per split: rows, positives, users, items, first and last timestamp (silver.interactions)."""
    inter = lake.read(INTERACTIONS, versions.get(INTERACTIONS.qualified))
    return (inter.groupBy("split").agg(
        F.count("*").alias("rows"), F.sum("label").alias("positives"), F.countDistinct("user_idx").alias("users"),
        F.countDistinct("item_idx").alias("items"), F.min("ts").alias("first"), F.max("ts").alias("last"))
        .toPandas().set_index("split").reindex([C.TRAIN, C.VALID, C.TEST]))


def split_cutoffs(lake: Lakehouse, versions: dict[str, int]) -> tuple[str, str] | None:
    """(valid_start, test_start) of the features run that wrote the evaluated silver.interactions
    version (meta.job_log), or None when no such run is recorded."""
    version = versions.get(INTERACTIONS.qualified)
    if version is None:
        return None
    run = last_run(lake, "features", output=(INTERACTIONS.qualified, int(version)))
    if run is None:
        return None
    summary = run.summary
    if summary.get("valid_start") and summary.get("test_start"):
        return str(summary["valid_start"]), str(summary["test_start"])
    return None


def training_history(params: dict[str, Any]) -> tuple[pd.DataFrame | None, str]:
    """The run's per-epoch records, from its result.json, else its MLflow run; and the source."""
    run_dir = params.get("run_dir")
    if run_dir and (Path(run_dir) / "result.json").is_file():
        data = json.loads((Path(run_dir) / "result.json").read_text(encoding="utf-8"))
        records = data.get("history") or []
        if records:
            frame = pd.DataFrame(records)
            frame["epoch"] = range(1, len(frame) + 1)
            if data.get("valid_start"):   # epoch 0: the untrained model (with item biases, popularity)
                start = pd.DataFrame([{**data["valid_start"], "epoch": 0, "loss": float("nan"), "phase": "prior"}])
                frame = pd.concat([start, frame], ignore_index=True)
            return frame, f"the run's result file ({Path(run_dir).name}/result.json)"
    uri, rid = params.get("tracking_uri"), params.get("mlflow_run_id")
    if uri and rid:
        frame = _mlflow_history(str(uri), str(rid))
        if frame is not None:
            return frame, f"MLflow run {rid}"
    return None, "absent"


def _mlflow_history(uri: str, rid: str) -> pd.DataFrame | None:
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        return None
    try:
        client = MlflowClient(tracking_uri=uri)
        rows = {m.step: {"epoch": m.step, "loss": m.value} for m in client.get_metric_history(rid, "epoch_loss")}
        valid_names = [k for k in client.get_run(rid).data.metrics if k.startswith("valid_")]
        for name in valid_names[:1]:
            for m in client.get_metric_history(rid, name):
                if m.step == 0:   # step 0 holds the run's summary value, not an epoch
                    continue
                rows.setdefault(m.step, {"epoch": m.step, "loss": float("nan")}).update(
                    valid_metric=m.value, metric_name=name.removeprefix("valid_"))
    except (MlflowException, OSError) as e:
        log.warning("cannot read MLflow run %s at %s: %s", rid, uri, e)
        return None
    return pd.DataFrame(sorted(rows.values(), key=lambda r: r["epoch"])) if rows else None


def _run_facts(lake: Lakehouse, model_version: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(gold.runs params, the run's config from its spec.json) of the evaluated model, if any."""
    if model_version is None:
        return {}, {}
    try:
        run = model_run(lake, model_version)
    except NoModelError:
        return {}, {}
    row = lake.read(RUNS_TABLE).where(F.col("run_id") == run.run_id).select("params").first()
    params = json.loads(row["params"]) if row and row["params"] else {}
    spec = Path(str(params.get("run_dir", ""))) / "spec.json"
    config = json.loads(spec.read_text(encoding="utf-8")).get("config", {}) if spec.is_file() else {}
    return {**params, "run_id": run.run_id, "checkpoint_path": run.checkpoint_path,
            "finished_at": str(run.finished_at)}, config


def _seeds(config: dict[str, Any], cfg: JobConfig) -> str:
    used = config or cfg.model_dump(mode="json")
    source = "the model run's config" if config else "the report's config"
    parts = [f"{section}.seed={used.get(section, {}).get('seed')}" for section in ("features", "model", "train")]
    return f"{', '.join(parts)} (from {source}); eval.seed={cfg.eval.seed} (bootstrap)"


def build_report(lake: Lakehouse, cfg: JobConfig) -> ReportResult:
    """Write ``<eval.report_dir>/index.md`` and its PNGs for ``eval.eval_id`` (None: the latest)."""
    eval_id = cfg.eval.eval_id or latest_eval_id(lake)
    metrics = lake.read(METRICS).where(F.col("eval_id") == eval_id).toPandas()
    if metrics.empty:
        raise ValueError(f"gold.metrics has no rows for eval_id {eval_id!r}: run `xrec evaluate` first")
    out = Path(cfg.eval.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    versions = dict(metrics["input_versions"].iloc[0] or {})
    # The evaluated split; baseline tuning rows (system "als[...]", "ease[...]") are always on valid.
    split = str(metrics.loc[~metrics[C.SYSTEM].map(is_tuning_row), "split"].iloc[0])
    models = metrics.dropna(subset=["model_version"]).groupby(C.SYSTEM)["model_version"].first().to_dict()
    params, run_config = _run_facts(lake, models.get("model"))
    names = {int(r["category_idx"]): r["category"] for r in
             lake.read(CATEGORY_INDEX, versions.get(CATEGORY_INDEX.qualified)).collect()}
    facts = data_facts(lake, versions)
    cutoffs = split_cutoffs(lake, versions)
    k = 10 if (metrics[C.K] == 10).any() else int(metrics[C.K].dropna().min())
    figures: list[Path] = []
    systems = _ranked_systems(metrics.loc[metrics[C.METRIC] == C.NDCG, C.SYSTEM])
    per_cat = metrics[(metrics[C.METRIC] == C.NDCG) & (metrics[C.K] == k) & (metrics["split"] == split)
                      & ~metrics[C.CATEGORY_NAME].isin([C.ALL, C.MACRO])]
    bar_notes: list[str] = []
    for slice_name in (C.ALL, C.CROSS_CATEGORY):
        part = per_cat[per_cat[C.SLICE] == slice_name]
        # A category with a handful of groups gives bars whose intervals span everything.
        sizes = part.groupby(C.CATEGORY_NAME)[C.GROUPS].max()
        shown = sizes[sizes >= MIN_GROUPS_FOR_VERDICT].index
        if len(shown) == 0 and len(sizes):
            # Small data: better every category with a warning than no figure at all.
            shown = sizes.index
            bar_notes.append(f"Slice `{slice_name}`: no category has {MIN_GROUPS_FOR_VERDICT} groups; all "
                             f"{len(sizes)} are drawn, and their intervals are wide.")
        elif len(sizes) > len(shown):
            bar_notes.append(f"Slice `{slice_name}`: {len(shown)} of {len(sizes)} categories have at least "
                             f"{MIN_GROUPS_FOR_VERDICT} groups and are drawn; the others are left out.")
        part = part[part[C.CATEGORY_NAME].isin(shown)]
        if len(part):
            figures.append(plots.category_bars(part, systems, out / f"ndcg{k}_by_category_{slice_name}.png",
                                               f"NDCG@{k} per category, slice {slice_name} ({split})"))
    transfer_note = "silver.category_transfer does not exist."
    if lake.exists(CATEGORY_TRANSFER):
        transfer = lake.read(CATEGORY_TRANSFER).toPandas()
        if len(transfer):
            figures.append(plots.transfer_heatmap(transfer, names, out / "category_transfer.png"))
            transfer_note = "![category transfer](category_transfer.png)"
    history, source = training_history(params)
    curve_note = ("No model in this evaluation (baselines only), so there is no training curve."
                  if "model" not in models else
                  "No training history was found for the evaluated model (no run result file and no "
                  "MLflow run), so there is no metric-vs-epoch curve.")
    if history is not None:
        figures.append(plots.training_curves(history, out / "training_curve.png",
                                             f"model {models.get('model')}: loss and validation metric per epoch"))
        curve_note = f"![training curve](training_curve.png)\n\nSource: {source}."
    text = _markdown(eval_id, split, k, metrics, facts, versions, models, params, _seeds(run_config, cfg),
                     figures, transfer_note, curve_note, cutoffs, bar_notes)
    (out / "index.md").write_text(text, encoding="utf-8")
    return ReportResult(out / "index.md", eval_id, figures)


def _text(v: Any) -> str:
    return "-" if pd.isna(v) else str(v)


def _utc_minute(v: Any) -> str:
    return "-" if pd.isna(v) else pd.Timestamp(v).strftime("%Y-%m-%d %H:%M")


def _data_context(facts: pd.DataFrame, versions: dict[str, int], cutoffs: tuple[str, str] | None) -> dict[str, Any]:
    """The template's Data section: input versions, split cutoffs, one table row per split."""
    rows = [f"| {s} | {_text(r['rows'])} | {_text(r['positives'])} | {_text(r['users'])} | {_text(r['items'])} | "
            f"{_utc_minute(r['first'])} | {_utc_minute(r['last'])} |" for s, r in facts.iterrows()]
    split_line = (f"Split (whole UTC days): train < {cutoffs[0]} <= valid < {cutoffs[1]} <= test."
                  if cutoffs else "Split cutoffs: not recorded (see the first/last columns).")
    return {"versions": [f"{t} v{v}" for t, v in sorted(versions.items())], "split_line": split_line,
            "data_rows": rows}


def _results_context(metrics: pd.DataFrame, k: int, split: str) -> dict[str, Any]:
    """The template's result tables and the baseline tuning points."""
    grid = metrics[metrics[C.SYSTEM].map(is_tuning_row)]
    points = sorted(grid.itertuples(index=False), key=lambda r: (getattr(r, C.SYSTEM).split("[")[0], -getattr(r, C.VALUE)))
    grid_lines = [f"- {getattr(r, C.SYSTEM)}: valid NDCG@{int(getattr(r, C.K))} = {getattr(r, C.VALUE):.4f}"
                  for r in points] or ["- (no tuned baseline run)"]
    return {"ndcg_table": summary_table(metrics, C.NDCG, k, split),
            "recall_table": summary_table(metrics, C.RECALL, k, split),
            "verdicts": verdicts(metrics, C.NDCG, k, split),
            "paired_table": paired_table(metrics, C.NDCG, k, split),
            "macro_table": summary_table(metrics, C.NDCG, k, split, C.MACRO),
            "coverage_table": coverage_table(metrics, k), "grid_lines": grid_lines}


def render_markdown(context: Mapping[str, Any]) -> str:
    """``report/index.md`` from the package's template ``templates/report.md.j2`` and ``context``
    (every name the template uses; a missing one raises ``jinja2.UndefinedError``)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("xrec_spark.eval", "templates"),
                             # Markdown, not HTML: a table cell must come out as written.
                             autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template(REPORT_TEMPLATE).render(context)


def _markdown(eval_id: str, split: str, k: int, metrics: pd.DataFrame, facts: pd.DataFrame,
              versions: dict[str, int], models: dict[str, str], params: dict[str, Any], seeds: str,
              figures: list[Path], transfer_note: str, curve_note: str,
              cutoffs: tuple[str, str] | None = None, bar_notes: list[str] | None = None) -> str:
    bars = "\n\n".join([*(bar_notes or []), *(f"![{p.stem}]({p.name})" for p in figures
                                                  if p.name.startswith("ndcg"))])
    model_lines = [f"- {s}: model_version `{v}`" for s, v in models.items()] or ["- none (baselines only)"]
    return render_markdown({
        "eval_id": eval_id, "split": split, "k": k, **_data_context(facts, versions, cutoffs), "seeds": seeds,
        "model_lines": model_lines, "run": params, **_results_context(metrics, k, split), "bars": bars,
        "transfer_note": transfer_note, "curve_note": curve_note})
