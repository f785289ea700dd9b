"""`xrec evaluate` and `xrec report` end to end on a hand-made lakehouse.

World: category 1 "books" = items 1, 2, 3, 4, 8 (8 is cold), category 2 "music" = items 5, 6, 7.
Train counts: 1:3, 2:2, 3:1, 5:3, 6:1 (4, 7, 8: 0). Test groups:
u1 books {3} warm, u1 music {6} warm, u2 books {2} warm, u4 books {1} cross_category and
{8} cold_item, u5 music {5} cold_user. Valid: u3 books {4} (seen for the test period).
The "model" m1 scores item i by i (user vectors [1], item vectors [i]).
"""

from __future__ import annotations

import math
from datetime import datetime

import pytest
import yaml

from conftest import make_config
from xrec_spark.eval import columns as C
from xrec_spark.eval.evaluate import eval_id_for, write_metrics
from xrec_spark.tables import (
    CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS, ITEM_EMBEDDINGS, ITEM_FEATURES, JOB_LOG, METRICS, RUNS,
    USER_EMBEDDINGS, USER_HISTORY,
)

ITEM_CATEGORY = {1: 1, 2: 1, 3: 1, 4: 1, 8: 1, 5: 2, 6: 2, 7: 2}
TRAIN = [(1, 1), (1, 2), (1, 5), (2, 1), (2, 5), (2, 6), (3, 1), (3, 2), (3, 3), (4, 5)]
VALID = [(3, 4, "warm")]
TEST = [(1, 3, "warm"), (1, 6, "warm"), (2, 2, "warm"), (4, 1, "cross_category"), (4, 8, "cold_item"),
        (5, 5, "cold_user")]
PAIRS = [(1, 1), (1, 2), (2, 1), (4, 1), (5, 2)]


def _ts(month: int, day: int) -> datetime:
    return datetime(2020, month, day)


def write_world(lake) -> None:
    spark = lake.spark

    def put(spec, rows):
        lake.overwrite(spec, spark.createDataFrame(rows, spec.schema))

    counts = {i: sum(1 for _, j in TRAIN if j == i) for i in ITEM_CATEGORY}
    put(CATEGORY_INDEX, [("books", 1), ("music", 2)])
    put(ITEM_FEATURES, [(i, c, f"item {i}", None, None, counts[i]) for i, c in ITEM_CATEGORY.items()])
    put(INTERACTIONS,
        [(u, i, ITEM_CATEGORY[i], _ts(1, n + 1), 5.0, 1, 1.0, "train", None) for n, (u, i) in enumerate(TRAIN)]
        + [(u, i, ITEM_CATEGORY[i], _ts(2, 1), 5.0, 1, 1.0, "valid", s) for u, i, s in VALID]
        + [(u, i, ITEM_CATEGORY[i], _ts(3, 1), 5.0, 1, 1.0, "test", s) for u, i, s in TEST])
    put(CATEGORY_TRANSFER, [(1, 2, 2, 0.67, 1.2, 0.5), (2, 1, 2, 0.5, 0.9, 0.5)])
    put(USER_HISTORY, [(u, [0, 0]) for u in range(1, 6)])
    put(ITEM_EMBEDDINGS, [(i, c, "m1", [float(i)], counts[i] == 0) for i, c in ITEM_CATEGORY.items()])
    put(USER_EMBEDDINGS, [(u, c, "m1", [1.0]) for u, c in PAIRS])
    # The checkpoint is never opened: every evaluated pair has an exported vector.
    put(RUNS, [("run-m1", "m1", "cfg", {}, {"loss": 0.5}, "/nonexistent/model.pt", _ts(4, 1), _ts(4, 1), None)])


@pytest.fixture
def config_file(tmp_path, lakehouse_root):
    cfg = make_config(lakehouse_root, eval={
        "baselines": ["popularity_global", "popularity_category"], "bootstrap_samples": 200, "ks": [1, 10],
        "report_dir": str(tmp_path / "report")})
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    return path


def _value(rows, system, slice_, metric="ndcg", k=10, category="all"):
    sel = rows[(rows[C.SYSTEM] == system) & (rows[C.SLICE] == slice_) & (rows[C.METRIC] == metric)
               & (rows[C.K] == k) & (rows[C.CATEGORY_NAME] == category)]
    assert len(sel) == 1, (system, slice_, metric, k, category, len(sel))
    return sel.iloc[0]


@pytest.mark.slow
def test_evaluate_and_report_end_to_end(lakehouse, config_file, tmp_path, capsys):
    from jobs.evaluate import main as evaluate_main
    from jobs.report import main as report_main

    write_world(lakehouse)
    assert evaluate_main(["--config", str(config_file)]) == 0
    printed = capsys.readouterr().out
    assert "NDCG@10" in printed and "popularity_category" in printed

    rows = lakehouse.read(METRICS).toPandas()
    assert rows["eval_id"].nunique() == 1
    pop, model = "popularity_category", "model"
    # Popularity within the category ranks every test positive first, except u4's cold item 8
    # (rank 5 of [1, 2, 3, 4, 8]).
    assert _value(rows, pop, "warm")[C.VALUE] == pytest.approx(1.0)
    assert _value(rows, pop, "warm")[C.GROUPS] == 3
    assert _value(rows, pop, "cold_item")[C.VALUE] == pytest.approx(1 / math.log2(6))
    want_all_u4 = (1 + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert _value(rows, pop, "all")[C.VALUE] == pytest.approx((4 + want_all_u4) / 5)
    # The model ranks by item id, descending: u1 books [8, 4, 3], u1 music [7, 6], u2 books [8, 4, 3, 2].
    want_model_warm = (1 / math.log2(4) + 1 / math.log2(3) + 1 / math.log2(5)) / 3
    assert _value(rows, model, "warm")[C.VALUE] == pytest.approx(want_model_warm)
    assert _value(rows, model, "warm")["model_version"] == "m1"
    assert _value(rows, model, "warm", category="books")[C.GROUPS] == 2
    warm = _value(rows, model, "warm")
    assert warm[C.CI_LOW] <= warm[C.VALUE] <= warm[C.CI_HIGH]
    # The paired difference model - baseline, per group, with its own interval.
    diff = _value(rows, f"{model} - {pop}", "warm")
    assert diff[C.VALUE] == pytest.approx(want_model_warm - 1.0) and diff[C.GROUPS] == 3
    assert diff[C.CI_LOW] <= diff[C.VALUE] <= diff[C.CI_HIGH] < 0
    # The global list ignores categories: [1, 5, 2, 3, 6, 4, 7, 8] (3 and 6 tie: lower id first);
    # minus seen items it is [3, 6, 4, 7, 8] for u1 (both categories) and [2, 3, 4, 7, 8] for u2.
    assert _value(rows, "popularity_global", "warm", "recall", 10)[C.VALUE] == pytest.approx(1.0)
    assert _value(rows, "popularity_global", "warm", "hit_rate", 1)[C.VALUE] == pytest.approx(2 / 3)
    cov = rows[(rows[C.METRIC] == C.COVERAGE) & (rows[C.SYSTEM] == pop) & (rows[C.K] == 10)
               & (rows[C.CATEGORY_NAME] == "books")]
    assert cov[C.VALUE].iloc[0] == pytest.approx(1.0)        # all five books items are in some list
    assert set(rows["input_versions"].iloc[0]) >= {INTERACTIONS.qualified, ITEM_FEATURES.qualified}

    # Idempotent: writing an eval_id again replaces its rows (what a re-run on the same inputs does).
    eval_id = rows["eval_id"].iloc[0]
    before = len(rows)
    again = rows.drop(columns=["eval_id", "run_date", "model_version", "input_versions"])
    write_metrics(lakehouse, again, eval_id, "test", {"model": "m1"}, {"silver.interactions": 1})
    after = lakehouse.read(METRICS).toPandas()
    assert len(after) == before and after["eval_id"].nunique() == 1
    assert lakehouse.read(JOB_LOG).where("job = 'evaluate'").count() == 1

    assert report_main(["--config", str(config_file)]) == 0
    report = tmp_path / "report"
    text = (report / "index.md").read_text(encoding="utf-8")
    assert "| model |" in text and "cross_category" in text and "m1" in text
    assert "## Model − each baseline" in text and "| popularity_category | " in text
    assert "2020-03-01" in text                               # the test period's dates
    assert "no metric-vs-epoch curve" in text                 # m1 has no training history
    for png in ("ndcg10_by_category_all.png", "category_transfer.png"):
        assert (report / png).stat().st_size > 5_000


def test_eval_id_depends_on_inputs_systems_and_models(tmp_path):
    cfg = make_config(tmp_path)
    inputs = {"silver.interactions": 3, "gold.runs": 7}
    base = eval_id_for(cfg, ["a", "b"], {"model": "m1"}, inputs)
    assert base.startswith("test-")
    assert eval_id_for(cfg, ["b", "a"], {"model": "m1"}, dict(inputs)) == base
    assert eval_id_for(cfg, ["a", "b"], {"model": "m1"}, {**inputs, "gold.runs": 8}) == base  # unrelated run
    assert eval_id_for(cfg, ["a", "b"], {"model": "m1"}, {**inputs, "silver.interactions": 4}) != base
    assert eval_id_for(cfg, ["a"], {"model": "m1"}, inputs) != base
    assert eval_id_for(cfg, ["a", "b"], {"model": "m2"}, inputs) != base
    assert eval_id_for(cfg.with_overrides(["eval.seed=6"]), ["a", "b"], {"model": "m1"}, inputs) != base
    assert eval_id_for(cfg.with_overrides(["eval.eval_id=mine-1"]), ["a"], {}, inputs) == "mine-1"
    # How many users a ranking call takes does not change the numbers.
    assert eval_id_for(cfg.with_overrides(["eval.users_per_block=7"]), ["a", "b"], {"model": "m1"}, inputs) == base
    on_valid = eval_id_for(cfg.with_overrides(["eval.split=valid"]), ["a", "b"], {"model": "m1"}, inputs)
    assert on_valid.startswith("valid-") and on_valid[len("valid-"):] != base[len("test-"):]


def test_evaluate_looks_up_the_models_before_it_reads_or_ranks_anything(lakehouse, lakehouse_root):
    # An empty lakehouse: the model's missing gold.runs row is what fails, not silver.interactions
    # (read next) nor the ALS search (which used to run first).
    from xrec_spark.eval.evaluate import evaluate
    from xrec_spark.lineage import NoModelError

    cfg = make_config(lakehouse_root, eval={"baselines": ["als"], "model_version": "m9"})
    with pytest.raises(NoModelError, match=r"gold\.runs does not exist"):
        evaluate(lakehouse, cfg)
