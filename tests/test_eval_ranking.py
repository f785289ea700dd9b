"""The numpy reference metrics and dense top-k: hand-computed cases, edge cases, a brute-force cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrec_spark.eval.reference_metrics import (
    hit_rate_at_k,
    mean_over_groups,
    mrr,
    ndcg_at_k,
    rank_metrics,
    recall_at_k,
)
from xrec_spark.ranking.dense import ranked_items, top_k

L3 = 1 / math.log2(3)  # discount of rank 2
L4 = 1 / math.log2(4)  # discount of rank 3

RANKED = np.array([
    [5, 3, 9, 0],      # A: hit at rank 2 of relevant {3, 7}
    [1, 2, 3, 4],      # B: no relevant items -> undefined
    [1, 2, 3, 4],      # C: all four hits, six relevant
    [7, 7, 0, 0],      # D: a repeated id counts once
    [0, 0, 0, 0],      # E: empty list (all padding)
])
RELEVANT = [np.array([3, 7]), np.array([], dtype=int), [6, 5, 4, 3, 2, 1], [7, 8], [0, 4]]


def test_recall_hand_computed():
    got = recall_at_k(RANKED, RELEVANT, 2)
    np.testing.assert_allclose(got, [0.5, np.nan, 2 / 6, 0.5, 0.0])
    # k larger than the list: missing positions are misses.
    np.testing.assert_allclose(recall_at_k(RANKED, RELEVANT, 10), [0.5, np.nan, 4 / 6, 0.5, 0.0])
    np.testing.assert_allclose(recall_at_k(RANKED, RELEVANT, 1), [0.0, np.nan, 1 / 6, 0.5, 0.0])


def test_ndcg_hand_computed():
    got = ndcg_at_k(RANKED, RELEVANT, 2)
    np.testing.assert_allclose(got, [L3 / (1 + L3), np.nan, 1.0, 1 / (1 + L3), 0.0])
    # k=10 > list length 4: group C has 6 relevant, so the ideal uses 6 positions, the list only 4.
    ideal6 = sum(1 / math.log2(r + 1) for r in range(1, 7))
    ideal4 = sum(1 / math.log2(r + 1) for r in range(1, 5))
    np.testing.assert_allclose(ndcg_at_k(RANKED, RELEVANT, 10),
                               [L3 / (1 + L3), np.nan, ideal4 / ideal6, 1 / (1 + L3), 0.0])


def test_hit_rate_and_mrr_hand_computed():
    np.testing.assert_allclose(hit_rate_at_k(RANKED, RELEVANT, 1), [0, np.nan, 1, 1, 0])
    np.testing.assert_allclose(hit_rate_at_k(RANKED, RELEVANT, 2), [1, np.nan, 1, 1, 0])
    np.testing.assert_allclose(mrr(RANKED, RELEVANT), [0.5, np.nan, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(mrr(RANKED, RELEVANT, 1), [0.0, np.nan, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(mrr(np.array([[0, 9, 8, 4]]), [[4]], 50), [0.25])


def test_empty_list_k_prime_zero():
    ranked = np.zeros((3, 0), dtype=np.int64)
    relevant = [[1], [], [2, 3]]
    for fn in (recall_at_k, ndcg_at_k, hit_rate_at_k):
        np.testing.assert_allclose(fn(ranked, relevant, 10), [0.0, np.nan, 0.0])
    np.testing.assert_allclose(mrr(ranked, relevant), [0.0, np.nan, 0.0])
    assert recall_at_k(np.zeros((0, 0), dtype=np.int64), [], 5).shape == (0,)


def test_rank_metrics_and_group_means_skip_undefined_groups():
    values = rank_metrics(RANKED, RELEVANT, [2, 10])
    assert sorted(values) == sorted(f"{m}@{k}" for m in ("recall", "ndcg", "hit_rate", "mrr") for k in (2, 10))
    np.testing.assert_allclose(values["recall@2"], recall_at_k(RANKED, RELEVANT, 2))
    means = mean_over_groups(values)
    mean, groups = means["recall@2"]
    assert groups == 4  # group B (no relevant items) is excluded
    assert mean == pytest.approx((0.5 + 2 / 6 + 0.5 + 0.0) / 4)


def _brute_force(ranked, relevant, k):
    """Independent per-row loop implementation of the four definitions."""
    out = {"recall": [], "ndcg": [], "hit_rate": [], "mrr": []}
    for row, rel in zip(ranked.tolist(), relevant):
        rel = {int(r) for r in rel if r != 0}
        if not rel:
            for name in out:
                out[name].append(float("nan"))
            continue
        seen, dcg, first = set(), 0.0, 0
        for pos, item in enumerate(row[:k], start=1):
            if item != 0 and item in rel and item not in seen:
                dcg += 1 / math.log2(pos + 1)
                first = first or pos
            seen.add(item)
        found = len(rel & set(row[:k]))
        ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(rel), k) + 1))
        out["recall"].append(found / len(rel))
        out["ndcg"].append(dcg / ideal)
        out["hit_rate"].append(1.0 if found else 0.0)
        out["mrr"].append(1 / first if first else 0.0)
    return {name: np.array(v) for name, v in out.items()}


def test_random_case_matches_brute_force():
    rng = np.random.default_rng(3)
    ranked = rng.integers(0, 40, size=(200, 30))
    relevant = [rng.choice(np.arange(1, 40), size=rng.integers(0, 6), replace=False) for _ in range(200)]
    for k in (1, 5, 30, 45):
        want = _brute_force(ranked, relevant, k)
        got = rank_metrics(ranked, relevant, [k])
        for name, values in want.items():
            np.testing.assert_allclose(got[f"{name}@{k}"], values, err_msg=f"{name}@{k}")


@pytest.mark.parametrize(
    "scores, k, mask, want",
    [
        ([[1, 3, 3, 2]], 2, None, [[1, 2]]),                         # tie: lower index first
        ([[1, 3, 3, 2]], 3, None, [[1, 2, 3]]),
        ([[2, 2, 2, 2]], 2, None, [[0, 1]]),
        ([[5, 1, 3, 3, 3, 0]], 3, None, [[0, 2, 3]]),                # tie straddles the cut
        ([[1, 3, 3, 2]], 2, [[False, True, False, False]], [[2, 3]]),  # excluded column
        ([[np.nan, 1, -np.inf]], 3, None, [[1, -1, -1]]),            # too few eligible
        ([[0.5, 0.2]], 5, None, [[0, 1]]),                           # k > N
    ],
)
def test_top_k_ties_and_exclusions(scores, k, mask, want):
    got = top_k(np.array(scores, dtype=float), k, None if mask is None else np.array(mask))
    np.testing.assert_array_equal(got, want)


def test_top_k_equals_stable_full_sort():
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 6, size=(50, 80)).astype(float)  # many ties
    for k in (1, 7, 80):
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k(scores, k), want)


def test_ranked_items_maps_columns_to_ids_with_zero_padding():
    scores = np.array([[0.1, 0.9, np.nan], [0.3, 0.2, 0.1]])
    got = ranked_items(scores, np.array([11, 12, 13]), 3, exclude_mask=np.array([[False] * 3, [True, False, False]]))
    np.testing.assert_array_equal(got, [[12, 11, 0], [12, 13, 0]])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: recall_at_k(np.zeros((1, 2), int), [[1]], 0), ValueError, "k must be >= 1"),
        (lambda: ndcg_at_k(np.zeros((1, 2), int), [[1]], 2.5), TypeError, "k must be an int"),
        (lambda: hit_rate_at_k(np.zeros((1, 2, 2), int), [[1]], 2), ValueError, "2-D"),
        (lambda: recall_at_k(np.zeros((2, 2), int), [[1]], 2), ValueError, "1 groups but ranked has 2"),
        (lambda: recall_at_k(np.zeros((1, 2)), [[1]], 2), TypeError, "integer item ids"),
        (lambda: top_k(np.zeros((2, 3)), 2, np.zeros((2, 2), bool)), ValueError, "exclude_mask shape"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_reference_module_imports_neither_pyspark_nor_torch():
    import subprocess
    import sys

    code = ("import sys, xrec_spark.eval.reference_metrics, xrec_spark.ranking.dense; "
            "bad = [m for m in ('pyspark', 'torch') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
