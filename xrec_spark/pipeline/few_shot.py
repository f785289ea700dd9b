"""The nightly's few-shot path: a new category, or new items, with few train events adapt the trained model.

When the category index gained categories since the latest fully trained model and each has
at most ``batch.few_shot_max_events`` train interactions (and ``batch.few_shot`` is on), the
nightly does not retrain everything. It loads that model, appends each new category with a
head initialised from its ``batch.few_shot_neighbours`` nearest trained categories by
silver.category_transfer, fits only the new categories' parameters on their rows of
silver.training_examples (:mod:`xrec_spark.model.few_shot`), and saves the result as a new
model version: a checkpoint and a gold.runs row whose params name its parent, so the
embeddings and candidates steps use it like any trained model.

Items work the same way (``batch.few_shot_items``): an item with train positives that had none
when the parent trained (added since, or present without positives then) gets its id and bias
rows fitted on its examples and a sample of its category's other examples, on the nights the
model is not retrained; without it such an item is ranked from content and popularity alone.

A few-shot version always starts from the fully trained model (the parent), never from an
earlier few-shot version: the next nights refit the head from the parent on the category's
grown events, until the category passes the threshold or the schedule or drift retrains
everything. The fine-tune runs in this (driver) process: a few hundred examples fit in
seconds, less than starting DDP ranks would take.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import reduce
from pathlib import Path
from typing import Any, Sequence

from pyspark.sql import functions as F

from xrec_spark.config import JobConfig
from xrec_spark.lineage import ModelRun, digest, model_run, run_params
from xrec_spark.tables import (
    CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS, ITEM_FEATURES, RUNS, TRAINING_EXAMPLES, Lakehouse)

log = logging.getLogger(__name__)

KIND = "few_shot"   # params.kind of a few-shot row in gold.runs
# Bumped when the few-shot code changes what the same parent, settings and inputs produce.
FEW_SHOT_LOGIC_VERSION = 2


@dataclass(frozen=True)
class FewShotPlan:
    """What to adapt ``parent`` to: the new categories ``{category_idx: train interactions}``
    and their natural ids, and the fresh items ``{item_idx: train positives}``."""

    parent: ModelRun
    events: dict[int, int]
    names: dict[int, str]
    items: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FewShotReport:
    """A few-shot version: its gold.runs identity, what it fitted, and whether it was reused."""

    run_id: str
    model_version: str
    parent_model_version: str
    neighbours: dict[int, list[int]]
    events: dict[int, int]
    metrics: dict[str, float] = field(default_factory=dict)
    reused: bool = False
    items: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """For the nightly's train marker (JSON)."""
        return {"parent": self.parent_model_version, "reused": self.reused,
                "categories": {str(k): {"events": self.events[k], "neighbours": self.neighbours.get(k, [])}
                               for k in sorted(self.events)},
                "items": {"count": len(self.items), "positives": sum(self.items.values())},
                **{k: round(v, 4) for k, v in self.metrics.items()}}


def trained_parent(lake: Lakehouse, latest: ModelRun) -> ModelRun:
    """The fully trained model behind ``latest``: its parent when ``latest`` is a few-shot
    version, else ``latest`` itself. Retrain decisions (age, drift, new categories) are taken
    against it."""
    found = run_params(lake, latest.run_id)
    params = found[1] if found is not None else {}
    if params.get("kind") != KIND:
        return latest
    return model_run(lake, params["parent_model_version"])


def train_events(lake: Lakehouse, categories: Sequence[int]) -> dict[int, int]:
    """Train-split rows of silver.interactions per category of ``categories`` (0 when none)."""
    rows = (lake.read(INTERACTIONS).where((F.col("split") == "train") & F.col("category_idx").isin(list(categories)))
            .groupBy("category_idx").count().collect())
    counts = {int(r["category_idx"]): int(r["count"]) for r in rows}
    return {int(k): counts.get(int(k), 0) for k in categories}


def parent_meta(parent: ModelRun) -> dict[str, Any]:
    """The meta of ``parent``'s checkpoint (sizes, model config, ...)."""
    from xrec_spark.model.checkpoint import read_checkpoint

    return read_checkpoint(parent.checkpoint_path)[1]


def parent_sizes(parent: ModelRun) -> dict[str, int]:
    """``parent``'s n_users, n_items, n_categories (its checkpoint's meta)."""
    return {k: int(v) for k, v in parent_meta(parent)["sizes"].items()}


def fresh_items(lake: Lakehouse, parent: ModelRun, new_categories: Sequence[int] = ()) -> dict[int, int]:
    """``{item_idx: train positives}`` of the items with train positives now whose rows
    ``parent`` never trained, in a category it knows or in ``new_categories``: items that had
    no positive when it trained (above its item count, or none in the silver.item_features
    version it read, when its inputs name one), and items that had fewer than its
    ``model.min_item_count`` then and at least that many now (it masked their id row and saved
    it as zeros, so they would be served without one until fitted)."""
    meta = parent_meta(parent)
    sizes = {k: int(v) for k, v in meta["sizes"].items()}
    categories = [*range(1, sizes["n_categories"] + 1), *new_categories]
    now = (lake.read(ITEM_FEATURES).where((F.col("train_count") > 0) & F.col("category_idx").isin(categories))
           .select("item_idx", "train_count"))
    then = parent.input_versions.get(ITEM_FEATURES.qualified)
    if then is None:
        fresh = now.where(F.col("item_idx") > sizes["n_items"])
    else:
        owns = int(meta["model_config"].get("min_item_count", 0))
        before = lake.read(ITEM_FEATURES, then).select("item_idx", F.col("train_count").alias("then"))
        crossed = (F.col("then") < owns) & (F.col("train_count") >= owns)   # at 0 or 1: nothing beyond then == 0
        fresh = (now.join(before, "item_idx", "left")
                 .where(F.col("then").isNull() | (F.col("then") == 0) | crossed).drop("then"))
    return {int(r["item_idx"]): int(r["train_count"]) for r in fresh.collect()}


def few_shot_plan(lake: Lakehouse, cfg: JobConfig, parent: ModelRun, new_categories: Sequence[str]) -> FewShotPlan | None:
    """The plan to adapt ``parent`` to ``new_categories`` (natural ids added since its
    training) and to the fresh items of its categories and theirs (:func:`fresh_items`, with
    ``batch.few_shot_items``), or None: ``batch.few_shot`` off, nothing new, or a new category
    with more than ``batch.few_shot_max_events`` train interactions (retrain)."""
    if not cfg.batch.few_shot:
        return None
    rows = lake.read(CATEGORY_INDEX).where(F.col("category").isin(list(new_categories))).collect() \
        if new_categories else []
    names = {int(r["category_idx"]): str(r["category"]) for r in rows}
    events = train_events(lake, sorted(names)) if names else {}
    over = {names[k]: n for k, n in events.items() if n > cfg.batch.few_shot_max_events}
    if over:
        log.info("few-shot off for this night: %s have more train interactions than batch.few_shot_max_events=%d",
                 over, cfg.batch.few_shot_max_events)
        return None
    items = fresh_items(lake, parent, sorted(names)) if cfg.batch.few_shot_items else {}
    if not names and not items:
        return None
    return FewShotPlan(parent, events, names, items)


def _device(cfg: JobConfig) -> str:
    """The export's device choice (``batch.device``), on this process: CPU when it sees no GPU."""
    import torch

    from xrec_spark.batch.export import export_device

    return export_device(cfg) if torch.cuda.is_available() else "cpu"


def _run_id(cfg: JobConfig, plan: FewShotPlan, versions: dict[str, int]) -> str:
    settings = {k: v for k, v in cfg.batch.model_dump(mode="json").items() if k.startswith("few_shot")}
    return digest({"parent": plan.parent.run_id, "inputs": dict(sorted(versions.items())), "few_shot": settings,
                   "categories": sorted(plan.events), "logic": FEW_SHOT_LOGIC_VERSION}, 20)


def run_few_shot(lake: Lakehouse, cfg: JobConfig, plan: FewShotPlan) -> FewShotReport:
    """Adapt ``plan.parent`` to the plan's categories and register the result (see module
    docstring); the same parent, settings and input versions give the same run, reused."""
    from xrec_spark.train import tracking
    from xrec_spark.train.launch import INPUTS

    versions = {k: v for k, v in lake.versions(INPUTS).items() if v is not None}
    run_id = _run_id(cfg, plan, versions)
    found = run_params(lake, run_id)
    if found is not None:
        version, params = found
        neighbours = {int(k): v for k, v in params.get("neighbours", {}).items()}
        return FewShotReport(run_id, version, plan.parent.model_version, neighbours, plan.events, reused=True,
                             items=plan.items)
    started = datetime.now(timezone.utc)
    model_version = f"m-{run_id[:12]}"
    path, neighbours, metrics = _adapt_and_save(lake, cfg, plan, versions, run_id, model_version)
    params = {"kind": KIND, "parent_model_version": plan.parent.model_version, "parent_run_id": plan.parent.run_id,
              "neighbours": {str(k): v for k, v in neighbours.items()},
              "events": {str(k): n for k, n in plan.events.items()},
              "categories": {str(k): name for k, name in plan.names.items()},
              "items": {"count": len(plan.items), "positives": sum(plan.items.values())}}
    # Its own MLflow run before its gold.runs row, as a trained model's: nested under the
    # parent's run (a parent from before tracking, or logged elsewhere, has none to nest under).
    parent_params = (run_params(lake, plan.parent.run_id) or (None, {}))[1]
    uri = tracking.tracking_uri(cfg, lake)
    params["mlflow_run_id"] = tracking.log_mlflow_derived(
        uri, run_id, model_version, params, metrics, Path(path), plan.parent.model_version,
        parent_params.get("mlflow_run_id") if parent_params.get("tracking_uri") == uri else None)
    params["tracking_uri"] = uri
    row = (run_id, model_version, cfg.fingerprint(), versions, metrics, path, started,
           datetime.now(timezone.utc), json.dumps(params, sort_keys=True))
    lake.merge(RUNS, lake.spark.createDataFrame([row], RUNS.schema), update=True, job=KIND)
    log.info("few-shot %s from %s: categories %s, %d fresh items, %s", model_version, plan.parent.model_version,
             plan.names, len(plan.items), metrics)
    return FewShotReport(run_id, model_version, plan.parent.model_version, neighbours, plan.events, metrics,
                         items=plan.items)


def _adapt_and_save(lake: Lakehouse, cfg: JobConfig, plan: FewShotPlan, versions: dict[str, int], run_id: str,
                    model_version: str) -> tuple[str, dict[int, list[int]], dict[str, float]]:
    """Load the parent, add the new heads and item rows and fit them, save the checkpoint;
    returns (its path, the neighbours used, metrics)."""
    from xrec_spark.model import save_model
    from xrec_spark.model.few_shot import (FewShotSettings, add_categories, add_items, fine_tune_new_rows,
                                           start_item_rows)
    from xrec_spark.train.launch import checkpoint_root

    clock = time.perf_counter()
    model = load_run_model(lake, plan.parent, versions[ITEM_FEATURES.qualified]).to(_device(cfg))
    targets, items = sorted(plan.events), sorted(plan.items)
    used = add_categories(model, nearest_categories(lake, versions, targets, model.sizes.n_categories,
                                                    cfg.batch.few_shot_neighbours)) if targets else {}
    if items:
        add_items(model, model.item_tower.content_rows - 1)
        start_item_rows(model, items)
    b = cfg.batch
    examples = plan_examples(lake, versions[TRAINING_EXAMPLES.qualified], targets, items, b.few_shot_context,
                             cfg.train.seed)
    settings = FewShotSettings(steps=b.few_shot_steps, lr=b.few_shot_lr, batch_size=b.few_shot_batch_size,
                               seed=cfg.train.seed, grad_clip=cfg.train.grad_clip)
    fit = fine_tune_new_rows(model, examples, settings, targets, items)
    path = checkpoint_root(cfg, lake) / run_id / "model.pt"
    save_model(path, model.cpu(), {"model_version": model_version, "run_id": run_id, "kind": KIND,
                                   "parent_model_version": plan.parent.model_version, "input_versions": versions})
    metrics = {"few_shot_steps": float(fit.steps), "few_shot_examples": float(fit.examples),
               "few_shot_fit_seconds": fit.seconds, "few_shot_seconds": time.perf_counter() - clock}
    if fit.steps:
        metrics.update(few_shot_first_loss=fit.first_loss, final_loss=fit.final_loss)
    return str(path), used, metrics


def load_run_model(lake: Lakehouse, run: ModelRun, features_version: int | None = None) -> Any:
    """``run``'s model (eval mode, CPU) on the item content of silver.item_features at
    ``features_version`` (None: latest), items added since its training included."""
    from xrec_spark.model.checkpoint import load_model_on_items
    from xrec_spark.model.content import ITEM_FEATURE_COLUMNS

    frame = lake.read(ITEM_FEATURES, features_version).select(*ITEM_FEATURE_COLUMNS).toArrow().to_pandas()
    return load_model_on_items(run.checkpoint_path, frame)[0]


def plan_examples(lake: Lakehouse, version: int | None, categories: Sequence[int], items: Sequence[int],
                  context: float, seed: int) -> dict[str, Any]:
    """The rows of silver.training_examples (at ``version``) a few-shot fit reads, as tensors
    (user_idx, item_idx, category_idx long ``[N]``, history long ``[N, L]``, label, weight float
    ``[N]``): every row of ``categories``; for ``items`` in other categories their rows plus a
    sample of about ``context`` times as many of their categories' other rows, each weighted by
    the inverse of the sampling rate (the category's loss as over all its rows)."""
    table = lake.read(TRAINING_EXAMPLES, version)
    parts = [table.where(F.col("category_idx").isin([int(k) for k in categories]))] if categories else []
    if items:
        fresh = F.broadcast(lake.spark.createDataFrame([(int(i),) for i in items], "item_idx long"))
        own = table.join(fresh, "item_idx")
        if categories:   # their rows are in the first part already
            own = own.where(~F.col("category_idx").isin([int(k) for k in categories]))
        item_categories = [int(r[0]) for r in own.select("category_idx").distinct().collect()]
        others = table.where(F.col("category_idx").isin(item_categories)).join(fresh, "item_idx", "left_anti")
        n_own, n_others = own.count(), others.count() if item_categories else 0
        rate = min(1.0, context * n_own / n_others) if n_others else 0.0
        parts.append(own)
        if rate > 0:
            parts.append(others.sample(fraction=rate, seed=seed).withColumn("weight", F.col("weight") / rate))
    return _example_tensors(parts)


def _example_tensors(parts: list[Any]) -> dict[str, Any]:
    """The rows of the DataFrames ``parts`` (at least one) as the tensors of :func:`plan_examples`."""
    import numpy as np
    import torch

    columns = TRAINING_EXAMPLES.schema.fieldNames()
    union = reduce(lambda a, b: a.unionByName(b), [p.select(*columns) for p in parts])
    frame = union.orderBy(*columns).toPandas()   # fixed order: same seed, same fit
    out = {c: torch.as_tensor(frame[c].to_numpy(np.int64)) for c in ("user_idx", "item_idx", "category_idx")}
    width = len(frame["history"].iloc[0]) if len(frame) else 0
    history = np.stack([np.asarray(h, dtype=np.int64) for h in frame["history"]]) if len(frame) else np.zeros((0, width))
    out["history"] = torch.as_tensor(history.astype(np.int64))
    for c in ("label", "weight"):
        out[c] = torch.as_tensor(frame[c].to_numpy(np.float32))
    return out


def nearest_categories(lake: Lakehouse, versions: dict[str, int], targets: list[int], trained: int,
                       top_n: int) -> dict[int, list[int]]:
    """Each target's ``top_n`` trained categories (1..``trained``) by silver.category_transfer
    lift; ``[]`` without transfer evidence (the head then starts from every trained one)."""
    from xrec_spark.model.transfer import choose_sources

    if CATEGORY_TRANSFER.qualified not in versions:
        return {k: [] for k in targets}
    transfer = (lake.read(CATEGORY_TRANSFER, versions[CATEGORY_TRANSFER.qualified])
                .where(F.col("src_category_idx") <= trained).toPandas())
    return choose_sources(transfer, targets, top_n)
