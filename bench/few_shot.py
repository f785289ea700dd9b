"""Few-shot adaptation on the soak's new-category scenario, or on new items: NDCG@10 and wall times.

    .venv/bin/python bench/few_shot.py                   # soak sizes, the new category has 1 train day
    .venv/bin/python bench/few_shot.py --new-share 0.1   # fewer events of the new category
    .venv/bin/python bench/few_shot.py --scenario items  # new items in the existing categories

``--scenario items``: from ``--new-category-day`` on, 80 new items of the existing categories
take ``--new-share`` of the events (one train day: a handful of positives each); the model is
the shipped recipe (category softmax, popularity prior, profile history) on the same sizes,
trained on the days before. Ranked: the test (user, category) groups holding a new item, over
their whole category (train items excluded), with (a) the base model, new items scored from
content, category and popularity; (b) the few-shot path (their id and bias rows fitted);
(c) a full retrain; and per-category popularity for reference. NDCG@10 counts every test
positive of the group; "new items only" counts only the new ones.

The synthetic generator of bench/soak.py (300 users, 400 items in 4 categories, 1,500 events a
day; from ``--new-category-day`` a new category with 40 new items and 30 new users takes
``--new-share`` of the events). Split by dates: the new category's first ``--train-days`` days
are train, the next day valid, the ``--test-days`` after it test.

1. Ingest the days before the new category, build features, train the model (it has no
   parameters for the new category): the model the nightly finds.
2. Ingest the rest, build features again (the new category now has a few train interactions).
3. Rank the new category's items for its test (user, category) groups, full ranking, the
   user's train items excluded (the training's validation code on the test rows), with:
   (a) what is served today for a category the model has no head for: the popularity
       fallback of candidate generation (train_count order);
   (a') the model with the new head initialised from its nearest heads, no fine-tune (content,
       category row and the users' histories through the averaged head);
   (b) the few-shot path of the nightly (pipeline.few_shot.run_few_shot);
   (c) a full retrain (the train job on the same tables).
Prints one JSON line per system (ndcg@10, groups, seconds) and a summary table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from xrec_spark.config import build_config  # noqa: E402
from xrec_spark.features.build import build_features  # noqa: E402
from xrec_spark.ingest.run import run_ingest  # noqa: E402
from xrec_spark.ingest.synthetic import SyntheticPaths, synthetic_ingest_config, write_synthetic  # noqa: E402
from xrec_spark.lineage import model_run  # noqa: E402
from xrec_spark.pipeline.few_shot import (few_shot_plan, fresh_items, load_run_model, parent_sizes,  # noqa: E402
                                          run_few_shot, train_events)
from xrec_spark.tables import CATEGORY_INDEX, INTERACTIONS, ITEM_FEATURES, USER_HISTORY, Lakehouse  # noqa: E402
from xrec_spark.train.launch import run_training  # noqa: E402
from xrec_spark.train.validation import (ValidationSet, build_validation, group_ndcg,  # noqa: E402
                                         validation_summary)
from soak import fresh_lake  # noqa: E402

K = 10


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events-per-day", type=int, default=1500)
    p.add_argument("--new-category-day", type=int, default=10, help="0-based day the new category appears")
    p.add_argument("--train-days", type=int, default=1, help="days of the new category in the train split")
    p.add_argument("--test-days", type=int, default=2)
    p.add_argument("--new-share", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=50, help="batch.few_shot_steps")
    p.add_argument("--epochs", type=int, default=1, help="train epochs of the base model and the retrain")
    p.add_argument("--scenario", choices=("category", "items"), default="category")
    p.add_argument("--recipe", choices=("soak", "shipped"), default="soak",
                   help="the category scenario's model: the soak's (8-dim, BCE) or the shipped recipe the items "
                        "scenario always uses")
    p.add_argument("--work", default="/tmp/xrec-few-shot")
    return p.parse_args(argv)


NEW_ITEMS = 80


def _items_recipe(args: argparse.Namespace) -> dict:
    """Config overrides of the items scenario: new items instead of a new category, and the
    shipped recipe (conf/local.yaml's model part) at the soak's sizes."""
    return {"synthetic": {"new_category_day": None, "new_items_day": args.new_category_day, "new_items": NEW_ITEMS,
                          "new_items_share": args.new_share},
            "features": {"history_length": 20, "history_as_of": "profile", "negatives": {"per_positive": 0}},
            "model": {"embedding_dim": 16, "hidden_dim": 32, "loss": "softmax", "item_bias": True,
                      "user_ids": False, "history_item_dropout": 0.5, "min_item_count": 3},
            "train": {"phases": [{"name": "finetune", "epochs": args.epochs, "lr": 0.005}]}}


def _config(root: Path, args: argparse.Namespace):
    days = args.new_category_day + args.train_days + 1 + args.test_days
    start = date(2024, 4, 1)
    valid = start + timedelta(days=args.new_category_day + args.train_days)
    base = {
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "3g",
                  "delta": {"jars_dir": str(REPO / ".cache" / "jars")},
                  "conf": {"spark.ui.enabled": "false", "spark.default.parallelism": "2"}},
        "lakehouse": {"root": str(root / "lakehouse")},
        "synthetic": {"users": 300, "items": 400, "categories": 4, "events": args.events_per_day * days,
                      "days": days, "start": start.isoformat(), "files": 1,
                      "new_category_day": args.new_category_day, "new_category_items": 40,
                      "new_category_users": 30, "new_category_share": args.new_share},
        "features": {"history_length": 5, "negatives": {"per_positive": 1}, "training_files": 2,
                     "split": {"valid_start": valid.isoformat(), "test_start": (valid + timedelta(days=1)).isoformat()}},
        "model": {"embedding_dim": 8, "hidden_dim": 16, "hash_buckets": 1024, "max_tokens": 8},
        "train": {"num_processes": 1, "batch_size": 256, "checkpoint_dir": str(root / "checkpoints"),
                  "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                  "phases": [{"name": "pretrain", "epochs": args.epochs}]},
        "batch": {"few_shot_steps": args.steps, "few_shot_max_events": 100_000},
    }
    overrides = _items_recipe(args)
    if args.scenario != "items":
        overrides.pop("synthetic")
    if args.scenario == "items" or args.recipe == "shipped":
        for section, values in overrides.items():
            base[section] = {**base[section], **values}
    return build_config(base, origin="few-shot bench")


def _ingest(spark, lake: Lakehouse, cfg, landing: str, first: int, last: int) -> int:
    days = ",".join(f"{d:04d}" for d in range(first, last + 1))
    paths = SyntheticPaths(f"{landing}/events-day-{{{days}}}", f"{landing}/items-day-{last:04d}",
                           f"{landing}/users-day-{last:04d}")
    summary = run_ingest(spark, lake, cfg.model_copy(
        update={"ingest": synthetic_ingest_config(paths, cfg.synthetic, cfg.ingest)}))
    return summary.inserted_events


class _Popularity(nn.Module):
    """The served fallback as a scorer: every user [1], every item [train_count] (item_idx breaks ties)."""

    def __init__(self, train_count: np.ndarray) -> None:
        super().__init__()
        n = train_count.shape[0]
        self.register_buffer("score", torch.as_tensor(train_count, dtype=torch.float64) - torch.arange(n) * 1e-9)

    def user_vectors(self, user_idx: Tensor, history: Tensor, category_idx: Tensor) -> Tensor:
        return torch.ones(user_idx.shape[0], 1, dtype=torch.float64)

    def item_vectors(self, item_idx: Tensor) -> Tensor:
        return self.score[item_idx].unsqueeze(-1)


def _test_groups(lake: Lakehouse, category: int, history_length: int) -> ValidationSet:
    """The new category's test groups, built by the validation code (test rows in valid's place)."""
    inter = lake.read(INTERACTIONS).select("user_idx", "item_idx", "category_idx", "split", "label").toPandas()
    inter = inter[inter["split"] != "valid"].replace({"split": {"test": "valid"}})
    items = lake.read(ITEM_FEATURES).select("item_idx", "category_idx").toPandas()
    histories = lake.read(USER_HISTORY).select("user_idx", "history").toPandas()
    return build_validation(inter, items, histories, [category], history_length, 10**9, 0)


def _ndcg(model: nn.Module, groups: ValidationSet) -> float:
    return validation_summary(model, groups, K, torch.device("cpu"))[0]


def _train_count(lake: Lakehouse) -> np.ndarray:
    counts = lake.read(ITEM_FEATURES).select("item_idx", "train_count").toPandas()
    train_count = np.zeros(int(counts["item_idx"].max()) + 1)
    train_count[counts["item_idx"].to_numpy()] = counts["train_count"].to_numpy()
    return train_count


def _timed(label: str, make) -> tuple[str, nn.Module, float]:
    clock = time.perf_counter()
    model = make()
    return label, model, time.perf_counter() - clock


def _category_systems(lake: Lakehouse, cfg, args: argparse.Namespace, base) -> list[tuple[str, float, float]]:
    """(label, NDCG@10, wall s) of each system on the new category's test groups."""
    name = f"cat{cfg.synthetic.categories + 1:02d}"
    category = int(lake.read(CATEGORY_INDEX).where(f"category = '{name}'").first()["category_idx"])
    events = train_events(lake, [category])[category]
    groups = _test_groups(lake, category, cfg.features.history_length)
    print(json.dumps({"new_category": name, "train_interactions": events, "test_groups": groups.groups}), flush=True)
    zero = cfg.model_copy(update={"batch": cfg.batch.model_copy(update={"few_shot_steps": 0})})

    def adapted(run_cfg):
        few = run_few_shot(lake, run_cfg, few_shot_plan(lake, run_cfg, base, [name]))
        print(json.dumps({"few_shot": few.summary()}), flush=True)
        return load_run_model(lake, model_run(lake, few.model_version))

    systems = [("a  served today: popularity fallback", _Popularity(_train_count(lake)), 0.0),
               _timed("a' nearest-heads init, no fine-tune", lambda: adapted(zero)),
               _timed(f"b  few-shot ({args.steps} steps)", lambda: adapted(cfg)),
               _timed("c  full retrain",
                      lambda: load_run_model(lake, model_run(lake, run_training(cfg, lake).spec.model_version)))]
    _print_intervals(systems, groups, few_shot=2, others=(0, 3))
    return [(label, _ndcg(model, groups), secs) for label, model, secs in systems]


def _print_intervals(systems: list[tuple[str, nn.Module, float]], groups: ValidationSet, few_shot: int,
                     others: tuple[int, ...]) -> None:
    """The few-shot system against each of ``others``: mean NDCG@K difference, paired 95% interval."""
    per_group = [group_ndcg(model, groups, K, torch.device("cpu")) for _, model, _ in systems]
    for other in others:
        low, high = _paired_interval(per_group[few_shot], per_group[other])
        print(json.dumps({"difference": f"{systems[few_shot][0].split()[0]} - {systems[other][0].split()[0]}",
                          f"ndcg@{K}": round(float(np.nanmean(per_group[few_shot] - per_group[other])), 4),
                          "ci95": [round(low, 4), round(high, 4)]}), flush=True)


def _new_item_groups(lake: Lakehouse, n_items: int, history_length: int, only_new: bool) -> ValidationSet:
    """Test (user, category) groups holding an item above ``n_items`` (new since the base
    model), built by the validation code; ``only_new``: only the new items count as relevant."""
    inter = lake.read(INTERACTIONS).select("user_idx", "item_idx", "category_idx", "split", "label").toPandas()
    inter = inter[inter["split"] != "valid"].replace({"split": {"test": "valid"}})
    test = inter[(inter["split"] == "valid") & (inter["label"] > 0)]
    keys = test.loc[test["item_idx"] > n_items, ["user_idx", "category_idx"]].drop_duplicates()
    held = test.merge(keys, on=["user_idx", "category_idx"])
    if only_new:
        held = held[held["item_idx"] > n_items]
    inter = pd.concat([inter[inter["split"] == "train"], held])
    items = lake.read(ITEM_FEATURES).select("item_idx", "category_idx").toPandas()
    histories = lake.read(USER_HISTORY).select("user_idx", "history").toPandas()
    return build_validation(inter, items, histories, sorted(items["category_idx"].unique()), history_length, 10**9, 0)


def _item_systems(lake: Lakehouse, cfg, args: argparse.Namespace, base) -> list[tuple[str, float, float, float]]:
    """(label, NDCG@10, NDCG@10 new items only, wall s) of each system on the groups holding a new item."""
    n_items = parent_sizes(base)["n_items"]
    fresh = fresh_items(lake, base)
    groups = [_new_item_groups(lake, n_items, cfg.features.history_length, only) for only in (False, True)]
    print(json.dumps({"new_items": int(_train_count(lake).shape[0] - 1 - n_items), "fresh_items": len(fresh),
                      "fresh_items_train_positives": sum(fresh.values()), "test_groups": groups[0].groups}), flush=True)
    systems = [("   per-category popularity", _Popularity(_train_count(lake)), 0.0),
               _timed("a  base model: new items from content, category, popularity",
                      lambda: load_run_model(lake, base))]

    def adapted():
        few = run_few_shot(lake, cfg, few_shot_plan(lake, cfg, base, []))
        print(json.dumps({"few_shot": few.summary()}), flush=True)
        return load_run_model(lake, model_run(lake, few.model_version))

    systems.append(_timed(f"b  few-shot rows ({args.steps} steps)", adapted))
    systems.append(_timed("c  full retrain",
                          lambda: load_run_model(lake, model_run(lake, run_training(cfg, lake).spec.model_version))))
    _print_intervals(systems, groups[0], few_shot=2, others=(1, 3))   # vs the base model and the retrain
    return [(label, _ndcg(model, groups[0]), _ndcg(model, groups[1]), secs) for label, model, secs in systems]


def _paired_interval(a: np.ndarray, b: np.ndarray, samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(a - b) over groups resampled with replacement (paired)."""
    diff = (a - b)[~np.isnan(a - b)]
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (samples, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    work = Path(args.work)
    cfg, spark, lake = fresh_lake(work, lambda root: _config(root, args))
    landing = str(work / "landing")
    for d in range(cfg.synthetic.days):
        write_synthetic(spark, cfg.synthetic, landing, day=d)
    new_day = args.new_category_day
    _ingest(spark, lake, cfg, landing, 0, new_day - 1)
    build_features(spark, lake, cfg)
    clock = time.perf_counter()
    base = model_run(lake, run_training(cfg, lake).spec.model_version)
    print(json.dumps({"base_model": base.model_version, "base_train_seconds": round(time.perf_counter() - clock, 1)}),
          flush=True)
    _ingest(spark, lake, cfg, landing, new_day, cfg.synthetic.days - 1)
    build_features(spark, lake, cfg)
    if args.scenario == "items":
        rows = _item_systems(lake, cfg, args, base)
        for label, value, new_only, secs in rows:
            print(json.dumps({"system": label, f"ndcg@{K}": round(value, 4), f"ndcg@{K}_new_items": round(new_only, 4),
                              "seconds": round(secs, 1)}), flush=True)
        print(f"| system | NDCG@{K} | NDCG@{K}, new items only | wall s |\n|---|---:|---:|---:|")
        for label, value, new_only, secs in rows:
            print(f"| {label.strip()} | {value:.4f} | {new_only:.4f} | {secs:.1f} |")
    else:
        rows3 = _category_systems(lake, cfg, args, base)
        for label, value, secs in rows3:
            print(json.dumps({"system": label, f"ndcg@{K}": round(value, 4), "seconds": round(secs, 1)}), flush=True)
        print(f"| system | NDCG@{K} | wall s |\n|---|---:|---:|")
        for label, value, secs in rows3:
            print(f"| {label} | {value:.4f} | {secs:.1f} |")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
