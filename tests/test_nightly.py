"""The nightly chain: retrain decision, day paths, and a killed run that finishes like an unbroken one."""

from __future__ import annotations

import shutil
from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

from batch_fixtures import assert_same_rows, write_run
from conftest import make_config
from xrec_spark.pipeline.drift import new_events_since, retrain_reason
from xrec_spark.lineage import utc_now
from xrec_spark.pipeline.nightly import NightlyInterrupted, day_config, run_nightly
from xrec_spark.config import BatchConfig, ModelConfig
from xrec_spark.features.build import build_features
from xrec_spark.ingest.run import run_ingest
from xrec_spark.model import CrossCategoryModel, ItemContent, ModelSizes, save_model
from xrec_spark.tables import (
    BRONZE_EVENTS, CANDIDATES, CATEGORY_INDEX, ITEM_EMBEDDINGS, ITEM_FEATURES, JOB_LOG, USER_INDEX, Lakehouse,
)

DAY1, DAY2 = date(2024, 3, 1), date(2024, 3, 2)


@pytest.mark.parametrize("finished, run_date, drift, every, threshold, reason", [
    (datetime(2024, 3, 1, 23), date(2024, 3, 2), 0.0, 1, 0.2, "schedule: model is 1 days old"),
    (datetime(2024, 3, 2, 1), date(2024, 3, 2), 0.0, 1, 0.2, None),     # trained today already
    (datetime(2024, 3, 1), date(2024, 3, 5), 0.0, 7, 0.2, None),
    (datetime(2024, 3, 1), date(2024, 3, 8), 0.0, 7, 0.2, "schedule: model is 7 days old"),
    (datetime(2024, 3, 1), date(2024, 9, 1), 0.0, 0, 0.2, None),        # schedule off
    (datetime(2024, 3, 1), date(2024, 3, 2), 0.25, 7, 0.2, "drift: 0.250"),
    (datetime(2024, 3, 1), date(2024, 3, 2), 0.19, 7, 0.2, None),
])
def test_retrain_reason(finished, run_date, drift, every, threshold, reason):
    got = retrain_reason(finished, run_date, drift, BatchConfig(retrain_every_days=every, drift_threshold=threshold))
    assert (got is None) == (reason is None)
    if reason:
        assert got.startswith(reason)


def test_new_categories_come_first_among_retrain_reasons():
    cfg = BatchConfig(retrain_every_days=7, drift_threshold=0.2)
    got = retrain_reason(datetime(2024, 3, 1), date(2024, 3, 2), 0.0, cfg, ["cat05", "cat06"])
    assert got.startswith("new categories: cat05, cat06")
    assert retrain_reason(datetime(2024, 3, 1), date(2024, 3, 2), 0.0, cfg, []) is None


def test_a_drift_retrain_on_a_new_category_night_names_both():
    # Drift forces the full retrain (no few-shot head): the reason must not blame the category alone.
    got = retrain_reason(datetime(2024, 3, 1), date(2024, 3, 2), 0.3, BatchConfig(drift_threshold=0.2), ["cat05"])
    assert got.startswith("new categories: cat05") and "; drift: 0.300" in got


def test_categories_added_since_the_model_inputs(spark, tmp_path):
    from xrec_spark.pipeline.drift import categories_added_since
    from xrec_spark.tables import CATEGORY_INDEX, Lakehouse

    lake = Lakehouse(spark, str(tmp_path / "lakehouse"))
    assert categories_added_since(lake, {"silver.category_index": 0}) == []  # no table yet
    lake.append(CATEGORY_INDEX, spark.createDataFrame([("books", 1), ("music", 2)], CATEGORY_INDEX.schema))
    trained_on = lake.versions([CATEGORY_INDEX])
    lake.append(CATEGORY_INDEX, spark.createDataFrame([("toys", 3)], CATEGORY_INDEX.schema))
    assert categories_added_since(lake, trained_on) == ["toys"]
    assert categories_added_since(lake, lake.versions([CATEGORY_INDEX])) == []
    assert categories_added_since(lake, {}) == []  # a model without that lineage: no claim


def test_day_config_fills_the_date_into_source_paths(tmp_path):
    cfg = make_config(tmp_path, ingest={"events": {"path": "landing/{date}/events"}})
    assert day_config(cfg, DAY2).ingest.events.path == "landing/2024-03-02/events"
    plain = make_config(tmp_path, ingest={"events": {"path": "landing/all"}})
    assert day_config(plain, DAY2) is plain


# ------------------------------------------------------------------------------ the chain

USERS, CATEGORIES, ITEMS_PER_CATEGORY = 12, 3, 6


def _events(rng: np.random.Generator, n: int, start: str, users: int, items_per_category: int) -> pd.DataFrame:
    """n ratings: user u mostly rates items of "their" taste in every category (u % 2 picks the half)."""
    user = rng.integers(1, users + 1, n)
    cat = rng.integers(1, CATEGORIES + 1, n)
    half = items_per_category // 2
    item = (cat - 1) * items_per_category + (user % 2) * half + rng.integers(1, half + 1, n)
    ts = pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, 20 * 24 * 3600, n), unit="s")
    return pd.DataFrame({"user_id": [f"u{u}" for u in user], "item_id": [f"i{i}" for i in item],
                         "event_ts": ts.strftime("%Y-%m-%d %H:%M:%S"), "rating": rng.integers(3, 6, n),
                         "category": [f"c{c}" for c in cat]})


def _landing(root) -> str:
    rng = np.random.default_rng(11)
    for day, frame in ((DAY1, _events(rng, 160, "2024-02-01", USERS, ITEMS_PER_CATEGORY)),
                       # day 2: a new user (u13) and new items (i19, i20) among ordinary events
                       (DAY2, pd.concat([_events(rng, 14, "2024-02-21", USERS, ITEMS_PER_CATEGORY),
                                         pd.DataFrame({"user_id": ["u13", "u13", "u3", "u4"],
                                                       "item_id": ["i1", "i19", "i20", "i19"],
                                                       "event_ts": ["2024-02-29 10:00:00"] * 4,
                                                       "rating": [5, 4, 5, 4],
                                                       "category": ["c1", "c1", "c2", "c1"]})]))):
        folder = root / "landing" / day.isoformat()
        folder.mkdir(parents=True)
        frame.to_csv(folder / "events.csv", index=False)
    return str(root / "landing" / "{date}")


def _config(root, landing: str):
    columns = {"user_id": "user_id", "item_id": "item_id", "event_ts": "event_ts", "value": "rating",
               "category": "category"}
    return make_config(
        root,
        ingest={"events": {"path": landing, "format": "csv", "columns": columns}},
        features={"history_length": 5, "negatives": {"per_positive": 1}, "training_files": 2},
        batch={"top_k": 3, "user_top_categories": 1, "categories_for_all_users": ["c3"], "retrain_every_days": 7,
               "drift_threshold": 0.5},
        eval={"baselines": [], "bootstrap_samples": 10, "ks": [3]},
    )


def _trained_model(lake: Lakehouse, tmp_path) -> None:
    """Stand-in for yesterday's training: a model sized to the indexes, in gold.runs."""
    n = {spec.qualified: lake.read(spec).agg(F.max(col)).first()[0]
         for spec, col in ((USER_INDEX, "user_idx"), (CATEGORY_INDEX, "category_idx"))}
    frame = lake.read(ITEM_FEATURES).toPandas()
    cfg = ModelConfig(embedding_dim=8, hidden_dim=8, hash_buckets=64, max_tokens=4, seed=1)
    n_items = int(frame["item_idx"].max())
    content = ItemContent.from_frame(frame, cfg, n_items)
    sizes = ModelSizes(n_users=int(n[USER_INDEX.qualified]), n_items=n_items,
                       n_categories=int(n[CATEGORY_INDEX.qualified]))
    path = tmp_path / "models" / "m-day1.pt"
    save_model(path, CrossCategoryModel(cfg, sizes, content), {"model_version": "m-day1"})
    write_run(lake, "m-day1", path, finished=utc_now())


@pytest.mark.slow
def test_interrupted_nightly_finishes_like_an_uninterrupted_one(spark, tmp_path):
    landing = _landing(tmp_path)
    root_a, root_b = tmp_path / "lake_a", tmp_path / "lake_b"
    cfg_a, cfg_b = _config(root_a, landing), _config(root_b, landing)
    lake_a = Lakehouse(spark, str(root_a))
    # Day 1 was ingested and featurised, and a model trained, before tonight.
    run_ingest(spark, lake_a, day_config(cfg_a, DAY1))
    build_features(spark, lake_a, cfg_a)
    _trained_model(lake_a, tmp_path)
    shutil.copytree(root_a, root_b)
    lake_b = Lakehouse(spark, str(root_b))

    whole = run_nightly(lake_a, cfg_a, DAY2)
    assert [s.ran for s in whole.steps] == [True] * 6
    assert whole.model_version == "m-day1"  # 18 new events on 160: no drift, 1 day old: reused
    assert whole.steps[2].summary["retrained"] is False

    with pytest.raises(NightlyInterrupted, match="after step 'features'"):
        run_nightly(lake_b, cfg_b, DAY2, fail_after="features")
    assert not lake_b.exists(CANDIDATES)
    resumed = run_nightly(lake_b, cfg_b, DAY2)
    assert [(s.step, s.ran) for s in resumed.steps] == [
        ("ingest", False), ("features", False), ("train", True), ("embeddings", True), ("candidates", True),
        ("evaluate", True)]

    # Same candidates, same bronze (no event ingested twice), one marker per step and date.
    keys = ["run_date", "user_idx", "category_idx", "rank", "item_idx", "source", "model_version"]
    assert_same_rows(lake_b.read(CANDIDATES).select(keys), lake_a.read(CANDIDATES).select(keys))
    scores = lake_b.read(CANDIDATES).alias("b").join(lake_a.read(CANDIDATES).alias("a"), keys[:4])
    assert scores.agg(F.max(F.abs(F.col("a.score") - F.col("b.score")))).first()[0] < 1e-5
    assert lake_b.read(BRONZE_EVENTS).count() == lake_a.read(BRONZE_EVENTS).count() == 178
    markers = lake_b.read(JOB_LOG).where(F.col("job") == "nightly").groupBy("run_key").count()
    assert {r.run_key: r["count"] for r in markers.collect()} == {f"2024-03-02:{s}": 1 for s in
                                                                    ("ingest", "features", "train", "embeddings",
                                                                     "candidates", "evaluate")}
    # The new user (unknown to the old model) still gets candidates; every item, new ones too, a vector.
    new_user = lake_b.read(CANDIDATES).join(lake_b.read(USER_INDEX).where("user_id = 'u13'"), "user_idx")
    assert new_user.count() > 0
    new_items = lake_b.read(ITEM_EMBEDDINGS).join(
        lake_b.read(ITEM_FEATURES).select("item_idx", "train_count"), "item_idx")
    assert new_items.count() == lake_b.read(ITEM_FEATURES).count()

    # A third run of the same date does nothing and changes nothing.
    n = lake_a.read(CANDIDATES).count()
    again = run_nightly(lake_a, cfg_a, DAY2)
    assert [s.ran for s in again.steps] == [False] * 6
    assert lake_a.read(CANDIDATES).count() == n
    new, before = new_events_since(lake_a, datetime(2000, 1, 1))
    assert (new, before) == (178, 0)


def test_batch_commands_are_registered_and_reject_bad_dates(capsys):
    import importlib

    from xrec_spark.cli import COMMANDS

    for name, module in (("embeddings", "jobs.export_embeddings"), ("candidates", "jobs.generate_candidates"),
                         ("nightly", "jobs.nightly")):
        assert COMMANDS[name] == module
        assert callable(importlib.import_module(module).main)
    from jobs import nightly as nightly_job

    with pytest.raises(SystemExit) as exit_info:
        nightly_job.main(["--date", "2024-13-01"])
    assert exit_info.value.code == 2
    assert "--date '2024-13-01': expected YYYY-MM-DD" in capsys.readouterr().err


# ------------------------------------------------------------------------------ few-shot


def _few_shot_lake(spark, root) -> Lakehouse:
    """Hand-made silver tables: books (1) and music (2) known to the parent model, toys (3)
    added after its training with 4 train interactions on its new items 7-9 (the parent has
    items 1-6); users 1-2 also use books, user 3 music: transfer into toys is strongest from books."""
    from datetime import datetime as dt

    from xrec_spark.tables import CATEGORY_TRANSFER, INTERACTIONS, TRAINING_EXAMPLES

    lake = Lakehouse(spark, str(root))
    t = dt(2024, 2, 1)
    lake.append(CATEGORY_INDEX, spark.createDataFrame([("books", 1), ("music", 2), ("toys", 3)], CATEGORY_INDEX.schema))
    lake.append(USER_INDEX, spark.createDataFrame([(f"u{u}", u) for u in range(1, 5)], USER_INDEX.schema))
    texts = ["rome history", "space novel", "cook book", "jazz album", "piano solo", "rock live",
             "wooden train", "toy robot", "puzzle box"]
    lake.append(ITEM_FEATURES, spark.createDataFrame(
        [(i, (i - 1) // 3 + 1, texts[i - 1], None, None, 2 if i <= 6 else int(i == 7)) for i in range(1, 10)],
        ITEM_FEATURES.schema))
    train = [(1, 1, 1), (1, 2, 1), (2, 1, 1), (3, 4, 2), (3, 5, 2), (4, 6, 2),       # (user, item, category)
             (1, 7, 3), (2, 7, 3), (2, 8, 3), (3, 9, 3)]
    rows = [(u, i, k, t, 5.0, 1, 1.0, "train", None) for u, i, k in train] + [(4, 9, 3, t, 5.0, 1, 1.0, "test", "cold_user")]
    lake.append(INTERACTIONS, spark.createDataFrame(rows, INTERACTIONS.schema))
    lake.append(CATEGORY_TRANSFER, spark.createDataFrame(
        [(1, 3, 2, 1.0, 2.0, 0.5), (2, 3, 1, 0.5, 1.0, 0.3), (1, 2, 0, 0.0, 0.0, 0.0)], CATEGORY_TRANSFER.schema))
    examples = [(u, i, 3, 1.0, 1.0, [1, 2, 0]) for u, i, k in train if k == 3]
    examples += [(u, j, 3, 0.0, 1.0, [4, 0, 0]) for u, j in ((1, 9), (2, 9), (3, 7))]
    lake.append(TRAINING_EXAMPLES, spark.createDataFrame(examples, TRAINING_EXAMPLES.schema))
    return lake


def _parent_without_toys(lake: Lakehouse, tmp_path, n_categories: int = 2) -> str:
    """A stand-in model trained before toys existed (categories 1-2, items 1-6), in gold.runs;
    with ``n_categories=3`` one that knew toys but none of its items."""
    from xrec_spark.tables import RUNS

    frame = lake.read(ITEM_FEATURES).toPandas()
    cfg = ModelConfig(embedding_dim=8, hidden_dim=8, hash_buckets=64, max_tokens=4, seed=1, item_bias=True)
    path = tmp_path / "models" / "m-parent.pt"
    model = CrossCategoryModel(cfg, ModelSizes(n_users=4, n_items=6, n_categories=n_categories),
                               ItemContent.from_frame(frame, cfg, 9))
    with torch.no_grad():   # as after training: an untrained model's heads give f_k(h) = 0 (popularity order)
        for p in model.heads.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    save_model(path, model, {"model_version": "m-parent"})
    row = ("run-parent", "m-parent", "cfg", {"silver.category_index": 0}, {}, str(path), utc_now(), utc_now(), None)
    lake.append(RUNS, lake.spark.createDataFrame([row], RUNS.schema))
    return "m-parent"


@pytest.mark.slow
def test_few_shot_adapts_the_parent_to_a_new_category_and_registers_a_child(spark, tmp_path):
    from xrec_spark.lineage import model_run
    from xrec_spark.model.checkpoint import read_checkpoint
    from xrec_spark.pipeline.few_shot import few_shot_plan, load_run_model, run_few_shot, trained_parent
    from xrec_spark.tables import RUNS

    lake = _few_shot_lake(spark, tmp_path / "lake")
    base = make_config(tmp_path, batch={"few_shot_steps": 5, "few_shot_neighbours": 1, "few_shot_max_events": 4})
    parent = model_run(lake, _parent_without_toys(lake, tmp_path))

    def with_batch(**updates):
        return base.model_copy(update={"batch": base.batch.model_copy(update=updates)})

    assert few_shot_plan(lake, with_batch(few_shot=False), parent, ["toys"]) is None
    assert few_shot_plan(lake, with_batch(few_shot_max_events=3), parent, ["toys"]) is None   # 4 > 3: retrain
    assert few_shot_plan(lake, base, parent, []) is None
    plan = few_shot_plan(lake, base, parent, ["toys"])
    # Item 7 is toys' only item with a train positive (train_count 1): its rows are fitted too.
    assert plan is not None and plan.events == {3: 4} and plan.names == {3: "toys"} and plan.items == {7: 1}

    report = run_few_shot(lake, base, plan)
    assert not report.reused and report.parent_model_version == "m-parent"
    assert report.neighbours == {3: [1]}                     # books: the highest lift into toys
    assert report.metrics["few_shot_steps"] == 5 and report.metrics["few_shot_examples"] == 7
    child = model_run(lake)   # the latest model is the child: embeddings and candidates use it
    assert child.model_version == report.model_version != "m-parent"
    assert trained_parent(lake, child).model_version == "m-parent" and trained_parent(lake, parent) == parent
    model = load_run_model(lake, child)
    assert model.sizes.n_categories == 3
    assert read_checkpoint(child.checkpoint_path)[1]["parent_model_version"] == "m-parent"
    from mlflow.tracking import MlflowClient

    from xrec_spark.lineage import run_params
    from xrec_spark.train.tracking import tracking_uri
    logged = run_params(lake, report.run_id)[1]
    mlflow_run = MlflowClient(tracking_uri(base, lake)).get_run(logged["mlflow_run_id"])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["kind"] == "few_shot"
    assert mlflow_run.data.tags["xrec.parent_model_version"] == "m-parent"
    assert mlflow_run.data.metrics["few_shot_steps"] == 5
    adapted = model.state_dict()
    for name, value in load_run_model(lake, parent).state_dict().items():   # the parent's parameters are kept
        assert torch.equal(adapted[name][: value.shape[0]], value), name

    version = lake.version(RUNS)
    again = run_few_shot(lake, base, plan)   # same parent, settings and inputs: the same run
    assert again.reused and again.model_version == report.model_version and lake.version(RUNS) == version


@pytest.mark.slow
def test_few_shot_fits_the_rows_of_items_with_their_first_positives(spark, tmp_path):
    from xrec_spark.lineage import model_run
    from xrec_spark.pipeline.few_shot import few_shot_plan, load_run_model, run_few_shot

    lake = _few_shot_lake(spark, tmp_path / "lake")
    base = make_config(tmp_path, batch={"few_shot_steps": 5, "few_shot_lr": 0.05})
    parent = model_run(lake, _parent_without_toys(lake, tmp_path, n_categories=3))   # knows toys, not items 7-9
    off = base.model_copy(update={"batch": base.batch.model_copy(update={"few_shot_items": False})})
    assert few_shot_plan(lake, off, parent, []) is None
    plan = few_shot_plan(lake, base, parent, [])
    assert plan is not None and plan.events == {} and plan.items == {7: 1}
    report = run_few_shot(lake, base, plan)
    # Item 7's 2 rows and toys' other 5 (4 context rows per own row: all of them, weight 1).
    assert report.metrics["few_shot_examples"] == 7 and report.summary()["items"] == {"count": 1, "positives": 1}
    adapted = load_run_model(lake, model_run(lake, report.model_version))
    before = load_run_model(lake, parent)
    assert adapted.sizes.n_items == 9
    for name, value in before.state_dict().items():
        new = adapted.state_dict()[name]
        if name in ("item_tower.ids.weight", "item_tower.bias.weight"):   # grown from 7 rows to 10
            assert torch.equal(new[:7], value) and torch.all(new[8:] == 0) and torch.any(new[7] != 0), name
        else:
            assert torch.equal(new, value), f"{name} changed"


def test_fresh_items_are_first_positives_and_items_crossing_min_item_count(spark, tmp_path):
    """The parent (min_item_count 3) trained on item counts 5 2 0 1 0; now they are 6 3 1 2 0,
    plus item 6 with 4. Fresh: item 2 (2 -> 3: its id row was masked, saved as zeros), item 3
    (first positive) and item 6 (new). Not item 4 (1 -> 2: still below 3, its bias was trained)."""
    from xrec_spark.lineage import model_run
    from xrec_spark.model.checkpoint import read_checkpoint
    from xrec_spark.pipeline.few_shot import fresh_items
    from xrec_spark.tables import RUNS

    lake = Lakehouse(spark, str(tmp_path / "lake"))

    def features(counts):
        return spark.createDataFrame([(i, 1, f"item {i}", None, None, c) for i, c in enumerate(counts, 1)],
                                     ITEM_FEATURES.schema)

    lake.append(ITEM_FEATURES, features([5, 2, 0, 1, 0]))
    cfg = ModelConfig(embedding_dim=8, hidden_dim=8, hash_buckets=64, max_tokens=4, item_bias=True, min_item_count=3)
    path = tmp_path / "m-parent.pt"
    content = ItemContent.from_frame(lake.read(ITEM_FEATURES).toPandas(), cfg, 5)
    save_model(path, CrossCategoryModel(cfg, ModelSizes(n_users=2, n_items=5, n_categories=1), content),
               {"model_version": "m-parent"})
    assert torch.all(read_checkpoint(path)[0]["item_tower.ids.weight"][2:] == 0)   # items 2-5 own no row
    then = {ITEM_FEATURES.qualified: lake.version(ITEM_FEATURES)}
    row = ("run-parent", "m-parent", "cfg", then, {}, str(path), utc_now(), utc_now(), None)
    lake.append(RUNS, spark.createDataFrame([row], RUNS.schema))
    lake.overwrite(ITEM_FEATURES, features([6, 3, 1, 2, 0, 4]))
    assert fresh_items(lake, model_run(lake, "m-parent")) == {2: 3, 3: 1, 6: 4}
