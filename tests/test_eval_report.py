"""Report tables, verdicts and figures from hand-made gold.metrics rows (pandas only, no Spark)."""

from __future__ import annotations

import pandas as pd
import pytest

from xrec_spark.eval import columns as C
from xrec_spark.eval import plots
from xrec_spark.eval.report import coverage_table, paired_table, summary_table, training_history, verdicts


def _row(system, slice_, value, low, high, groups, category="all", metric="ndcg", k=10, split="test"):
    return {C.SYSTEM: system, C.SLICE: slice_, C.VALUE: value, C.CI_LOW: low, C.CI_HIGH: high,
            C.GROUPS: groups, C.CATEGORY_NAME: category, C.METRIC: metric, C.K: k, "split": split}


METRICS = pd.DataFrame([
    _row("model", "warm", 0.050, 0.040, 0.060, 300),
    _row("popularity_category", "warm", 0.030, 0.020, 0.039, 300),         # apart: a win
    _row("als", "warm", 0.020, 0.010, 0.030, 300),
    _row("model", "cross_category", 0.031, 0.020, 0.045, 250),
    _row("popularity_category", "cross_category", 0.030, 0.021, 0.040, 250),  # overlap
    _row("model", "cold_item", 0.001, 0.000, 0.002, 120),
    _row("popularity_category", "cold_item", 0.010, 0.005, 0.015, 120),     # apart: a loss
    _row("model", "cold_user", 0.5, 0.4, 0.6, 5),
    _row("popularity_category", "cold_user", 0.1, 0.0, 0.2, 5),            # too few groups
    _row("model", "warm", 0.7, 0.6, 0.8, 300, category="books"),           # per category: not in tables
    _row("model", "warm", 0.9, None, None, 300, metric="recall"),
])


def test_summary_table_lists_systems_by_slice_with_intervals_and_counts():
    text = summary_table(METRICS, C.NDCG, 10, "test")
    lines = text.splitlines()
    assert lines[0] == "| system | warm | cross_category | cold_user | cold_item |"
    assert lines[2].startswith("| model | 0.0500 [0.0400, 0.0600] (n=300) |")   # model first
    assert "| als | 0.0200 [0.0100, 0.0300] (n=300) | - | - | - |" in lines
    assert "0.9000 (n=300)" in summary_table(METRICS, C.RECALL, 10, "test")       # no interval


DIFFS = pd.DataFrame([   # paired differences model - baseline (bootstrap of per-group differences)
    _row("model - popularity_category", "warm", 0.020, 0.010, 0.030, 300),          # excludes 0: win
    _row("model - als", "warm", 0.030, 0.020, 0.040, 300),
    _row("model - popularity_category", "cross_category", 0.001, 0.0005, 0.002, 250),  # overlap, yet a win
    _row("model - popularity_category", "cold_item", -0.009, -0.012, -0.004, 120),   # loss
    _row("model - popularity_category", "cold_user", 0.4, 0.2, 0.6, 5),              # too few groups
])


def test_verdicts_come_from_the_paired_difference_interval():
    rows = pd.concat([METRICS, DIFFS], ignore_index=True)
    text = verdicts(rows, C.NDCG, 10, "test")
    row = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert "**win**" in row["warm"] and "+0.0200 [+0.0100, +0.0300]" in row["warm"]
    # marginal intervals [0.020, 0.045] and [0.021, 0.040] overlap; the paired one excludes 0
    assert "**win**" in row["cross_category"]
    assert "**loss**" in row["cold_item"]
    assert "too few groups" in row["cold_user"]
    assert "baselines only" in verdicts(rows[rows[C.SYSTEM] != "model"], C.NDCG, 10, "test")
    assert "no paired difference recorded" in verdicts(METRICS, C.NDCG, 10, "test")
    table = paired_table(rows, C.NDCG, 10, "test")
    assert "| als | +0.0300 [+0.0200, +0.0400] **win** | - | - | - |" in table
    assert "model - " not in summary_table(rows, C.NDCG, 10, "test")


def test_coverage_table():
    rows = pd.DataFrame([
        _row("model", "all", 0.25, None, None, 10, metric=C.COVERAGE),
        _row("model", "all", 1.5, None, None, 10, metric=C.POPULARITY_BIAS),
        _row("catalogue", "all", 0.4, None, None, 99, metric=C.CATALOGUE_POPULARITY, k=None),
    ])
    text = coverage_table(rows, 10)
    assert "| model | 0.2500 | 1.500 |" in text and "| (catalogue) | 1.0000 | 0.400 |" in text


def test_training_history_from_result_file_and_curve_png(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    history = [{"phase": "pretrain", "epoch": 1, "loss": 0.7, "valid_metric": 0.01, "metric_name": "ndcg@10",
                "valid_by_slice": {"warm": 0.02, "cold_user": 0.005}},
               {"phase": "pretrain", "epoch": 2, "loss": 0.6, "valid_metric": 0.02, "metric_name": "ndcg@10",
                "valid_by_slice": {"warm": 0.03, "cold_user": 0.01}},
               {"phase": "finetune", "epoch": 1, "loss": 0.5, "valid_metric": None, "metric_name": "ndcg@10"}]
    (run / "result.json").write_text(pd.Series({"history": history}).to_json(), encoding="utf-8")
    frame, source = training_history({"run_dir": str(run)})
    assert list(frame["epoch"]) == [1, 2, 3] and "result.json" in source
    assert training_history({"run_dir": str(tmp_path / "missing")}) == (None, "absent")
    png = plots.training_curves(frame, tmp_path / "curve.png", "test")
    assert png.stat().st_size > 5_000
    # With the untrained model's validation the curve starts at epoch 0 (the prior).
    start = {"valid_metric": 0.005, "valid_groups": 9, "metric_name": "ndcg@10",
             "valid_by_slice": {"warm": 0.01, "cold_user": 0.002}}
    (run / "result.json").write_text(pd.Series({"history": history, "valid_start": start}).to_json(),
                                     encoding="utf-8")
    frame, _ = training_history({"run_dir": str(run)})
    assert list(frame["epoch"]) == [0, 1, 2, 3] and frame["valid_metric"].iloc[0] == 0.005
    assert plots.training_curves(frame, tmp_path / "curve0.png", "test").stat().st_size > 5_000


@pytest.mark.parametrize("n_categories", [2, 28])
def test_heatmap_and_bars_render(tmp_path, n_categories):
    cats = range(1, n_categories + 1)
    transfer = pd.DataFrame([{"src_category_idx": s, "dst_category_idx": d, "lift": 0.5 + (s * d) % 5 / 2,
                              "users_both": 10 + s} for s in cats for d in cats])
    heat = plots.transfer_heatmap(transfer, {c: f"category {c}" for c in cats}, tmp_path / "heat.png")
    bars = plots.category_bars(pd.DataFrame([
        {"category": f"c{c}", "system": s, "value": 0.01 * c, "ci_low": 0.005 * c, "ci_high": 0.02 * c, "groups": c}
        for c in cats for s in ("model", "als")]), ["model", "als"], tmp_path / "bars.png", "NDCG@10")
    assert heat.stat().st_size > 5_000 and bars.stat().st_size > 5_000
