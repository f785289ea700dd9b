"""Verdicts from the paired bootstrap of per-group differences (pandas and numpy, no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xrec_spark.eval import columns as C
from xrec_spark.eval.bootstrap import LOSS, NO_DIFFERENCE, WIN, difference_system, summarize, verdict
from xrec_spark.eval.report import paired_table, verdicts


def _frame(values: dict[str, np.ndarray], categories: np.ndarray) -> pd.DataFrame:
    rows = []
    for system, vals in values.items():
        for user, (cat, v) in enumerate(zip(categories, vals), start=1):
            rows.append((system, user, int(cat), "warm", C.NDCG, 10, float(v)))
    return pd.DataFrame(rows, columns=[C.SYSTEM, C.USER, C.CATEGORY, C.SLICE, C.METRIC, C.K, C.VALUE])


def _constructed(n: int = 300):
    """baseline: large between-group variance; model = baseline + 0.02 (+ small noise);
    same = baseline + zero-mean noise; worse = baseline - 0.02."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0.0, 1.0, n)
    noise = rng.normal(0.0, 0.005, n)
    values = {"model": base + 0.02 + noise, "baseline": base, "same": base + noise - noise.mean(),
              "worse": base - 0.02}
    return values, rng.integers(1, 4, n)     # three categories (the bootstrap is stratified)


def test_marginal_intervals_overlap_but_the_paired_interval_excludes_zero():
    values, cats = _constructed()
    out = summarize(_frame(values, cats), samples=1000, seed=3, paired_with=["model"])
    get = out[out[C.CATEGORY_NAME] == C.ALL].set_index(C.SYSTEM)
    model, base = get.loc["model"], get.loc["baseline"]
    # The marginal intervals overlap widely (between-group spread ~0.29 / sqrt(300) ~ 0.017 each side)...
    assert model[C.CI_LOW] < base[C.CI_HIGH]
    # ...yet the paired difference is about 0.02 with an interval far from 0.
    diff = get.loc[difference_system("model", "baseline")]
    assert diff[C.VALUE] == pytest.approx(model[C.VALUE] - base[C.VALUE])
    assert diff[C.VALUE] == pytest.approx(0.02, abs=0.002)
    assert 0 < diff[C.CI_LOW] < diff[C.VALUE] < diff[C.CI_HIGH]
    assert diff[C.CI_HIGH] - diff[C.CI_LOW] < 0.1 * (model[C.CI_HIGH] - model[C.CI_LOW])
    assert diff[C.GROUPS] == 300
    assert verdict(diff[C.CI_LOW], diff[C.CI_HIGH]) == WIN
    worse = get.loc[difference_system("model", "worse")]
    assert verdict(worse[C.CI_LOW], worse[C.CI_HIGH]) == WIN
    same = get.loc[difference_system("model", "same")]
    assert verdict(same[C.CI_LOW], same[C.CI_HIGH]) == WIN      # model = same + 0.02 - mean noise
    # The difference interval is the percentile interval of the same resamples: the reference
    # minus itself is never a column, and only the reference gets differences.
    assert difference_system("model", "model") not in get.index
    assert difference_system("baseline", "model") not in get.index


def test_verdict_values():
    assert verdict(0.001, 0.01) == WIN
    assert verdict(-0.01, -0.001) == LOSS
    assert verdict(-0.01, 0.01) == NO_DIFFERENCE
    assert verdict(float("nan"), float("nan")) is None


def test_no_clear_difference_when_the_paired_interval_holds_zero():
    values, cats = _constructed()
    frame = _frame({"baseline": values["baseline"], "same": values["same"]}, cats)
    out = summarize(frame, samples=1000, seed=3, paired_with=["same"])
    diff = out[(out[C.CATEGORY_NAME] == C.ALL) & (out[C.SYSTEM] == difference_system("same", "baseline"))].iloc[0]
    assert verdict(diff[C.CI_LOW], diff[C.CI_HIGH]) == NO_DIFFERENCE


def _report_rows() -> pd.DataFrame:
    values, cats = _constructed()
    out = summarize(_frame({k: values[k] for k in ("model", "baseline")}, cats), samples=500, seed=3,
                    paired_with=["model"])
    return out.assign(split="test")


def test_report_tables_show_the_difference_its_interval_and_the_verdict():
    rows = _report_rows()
    text = paired_table(rows, C.NDCG, 10, "test")
    line = [x for x in text.splitlines() if x.startswith("| baseline |")][0]
    assert "**win**" in line and "[+0.0" in line
    table = verdicts(rows, C.NDCG, 10, "test")
    warm = [x for x in table.splitlines() if x.startswith("| warm |")][0]
    assert "baseline" in warm and "**win**" in warm
    # differences are not systems of the summary table
    from xrec_spark.eval.report import summary_table
    assert " - " not in summary_table(rows, C.NDCG, 10, "test")


def _bench_quality():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_results_file_shape_and_rendered_tables():
    bench = _bench_quality()
    rows = _report_rows()
    tuning = pd.DataFrame([
        {C.SYSTEM: "als[rank=64,reg=0.1,alpha=5.0]", C.VALUE: 0.03, C.GROUPS: 90},
        {C.SYSTEM: "als[rank=32,reg=0.1,alpha=5.0]", C.VALUE: 0.04, C.GROUPS: 90},
        {C.SYSTEM: "ease[lambda=20.0,items=4]", C.VALUE: 0.05, C.GROUPS: 90},
    ]).assign(**{"split": "valid", C.CATEGORY_NAME: C.ALL, C.SLICE: C.ALL, C.METRIC: C.NDCG, C.K: 10,
                 C.CI_LOW: float("nan"), C.CI_HIGH: float("nan")})
    doc = bench.quality_json(pd.concat([rows, tuning], ignore_index=True), "toy", "test", max_iter=15)
    assert (doc["dataset"], doc["split"], doc["metric"]) == ("toy", "test", "ndcg@10")
    assert set(doc["systems"]) == {"model", "baseline"}
    warm = doc["systems"]["model"]["warm"]
    assert set(warm) == {"value", "ci", "n"} and warm["n"] == 300 and warm["ci"][0] < warm["value"] < warm["ci"][1]
    diff = doc["paired"]["baseline"]["warm"]
    assert diff["diff"] == pytest.approx(warm["value"] - doc["systems"]["baseline"]["warm"]["value"], abs=1e-5)
    assert diff["ci"][0] > 0 and diff["verdict"] == WIN
    assert doc["params"]["als"] == {"rank": 32, "reg": 0.1, "alpha": 5.0, "valid_ndcg@10": 0.04,
                                    "points_tried": 2, "valid_groups": 90, "max_iter": 15}
    assert doc["params"]["ease"]["lambda"] == 20.0 and doc["params"]["ease"]["items"] == 4
    import json
    text = bench.render_markdown(json.loads(json.dumps(doc)))
    assert "| baseline | " in text and "**win**" in text and "ease lambda=20.0" in text
