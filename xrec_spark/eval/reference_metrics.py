"""Reference ranking metrics in pure numpy (no pyspark, no torch): the definitions of record.

The Spark evaluation (:mod:`xrec_spark.eval.metrics`) and training's early stopping compute the
same numbers; tests check them against these functions. The rankings they score come from
:mod:`xrec_spark.ranking` (:func:`xrec_spark.ranking.dense.ranked_items` for a score matrix).

Inputs of every metric function (one signature family ``f(ranked, relevant, k)``):

- ``ranked``: int array ``[G, K']`` of item ids in rank order, one row per evaluation group
  (a user x category x slice). ``0`` means "no item" (padding) and never counts as a hit.
  If an id occurs twice in a row only its first (best) position counts.
- ``relevant``: a sequence of ``G`` int arrays, the group's held-out positives. Order and
  duplicates do not matter; ``0`` entries are ignored.
- ``k``: cut-off, ``k >= 1``. ``k`` larger than ``K'`` is allowed: the missing positions are
  misses (a short list is not rewarded: NDCG's ideal DCG still uses ``min(|relevant|, k)``).

Each returns a float64 array ``[G]`` of per-group values. **A group with no relevant item gets
NaN** (the metric is undefined for it); :func:`mean_over_groups` and every average in this
package skip NaN, so such groups are excluded from averages and from group counts.

Definitions (rank r is 1-based, hits(k) = relevant items among the first k):

- Recall@k = hits(k) / |relevant|
- HR@k     = 1 if hits(k) > 0 else 0
- NDCG@k   = sum_{hit at r <= k} 1/log2(r+1)  /  sum_{r=1}^{min(|relevant|, k)} 1/log2(r+1)
- MRR@k    = 1 / (rank of the first hit) if it is <= k else 0   (``k=None``: the whole list)
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from xrec_spark.eval.columns import HIT_RATE, MRR, NDCG, RANK_METRICS, RECALL
from xrec_spark.ranking.dense import check_k

METRIC_NAMES: tuple[str, ...] = RANK_METRICS


def _check_ranked(ranked: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    arr = np.asarray(ranked)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ValueError(f"ranked must be a 2-D array [groups, positions]; got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ranked must hold integer item ids; got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_k(k: int | None, allow_none: bool = False) -> None:
    if k is None and allow_none:
        return
    check_k(k)  # type: ignore[arg-type]


def hit_matrix(ranked: np.ndarray, relevant: Sequence[Iterable[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Which ranked positions are hits, and how many relevant items each group has.

    Returns ``(hits bool [G, K'], n_relevant int [G])``. Padding (0) and repeated ids (after
    their first position) are never hits.
    """
    ranked = _check_ranked(ranked)
    groups, width = ranked.shape
    if len(relevant) != groups:
        raise ValueError(f"relevant has {len(relevant)} groups but ranked has {groups} rows")
    rel = [np.unique(np.asarray(list(r) if not isinstance(r, np.ndarray) else r, dtype=np.int64))
           for r in relevant]
    rel = [r[r != 0] for r in rel]
    n_relevant = np.array([r.size for r in rel], dtype=np.int64)
    if groups == 0 or width == 0:
        return np.zeros((groups, width), dtype=bool), n_relevant
    # Membership of (group, item) pairs, vectorised: encode each pair as one int64 key.
    rel_items = np.concatenate(rel) if rel else np.zeros(0, np.int64)
    base = int(max(ranked.max(initial=0), rel_items.max(initial=0))) + 1
    rel_keys = np.repeat(np.arange(groups, dtype=np.int64), n_relevant) * base + rel_items
    keys = np.arange(groups, dtype=np.int64)[:, None] * base + ranked
    hits = np.isin(keys, rel_keys) & (ranked != 0)
    # Keep only the first occurrence of an id within a row.
    order = np.argsort(ranked, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ranked, order, axis=1)
    repeated_sorted = np.zeros_like(sorted_ids, dtype=bool)
    repeated_sorted[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    repeated = np.zeros_like(repeated_sorted)
    np.put_along_axis(repeated, order, repeated_sorted, axis=1)
    return hits & ~repeated, n_relevant


def _cut(hits: np.ndarray, k: int | None) -> np.ndarray:
    return hits if k is None else hits[:, :k]


def _undefined_as_nan(values: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    values[n_relevant == 0] = np.nan
    return values


def _recall(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    found = _cut(hits, k).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _undefined_as_nan(found / np.maximum(n_rel, 1), n_rel)


def _hit_rate(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return _undefined_as_nan(_cut(hits, k).any(axis=1), n_rel)


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    cut = _cut(hits, k)
    discounts = 1.0 / np.log2(np.arange(2, cut.shape[1] + 2))
    dcg = (cut * discounts).sum(axis=1)
    ideal_discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal_discounts[np.minimum(n_rel, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _undefined_as_nan(np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0), n_rel)


def _mrr(hits: np.ndarray, n_rel: np.ndarray, k: int | None) -> np.ndarray:
    cut = _cut(hits, k)
    any_hit = cut.any(axis=1)
    first = np.argmax(cut, axis=1) + 1 if cut.shape[1] else np.ones(cut.shape[0], np.int64)
    return _undefined_as_nan(np.where(any_hit, 1.0 / first, 0.0), n_rel)


def recall_at_k(ranked, relevant: Sequence[Iterable[int]], k: int) -> np.ndarray:
    """Recall@k per group: relevant items found in the first k / number of relevant items."""
    _check_k(k)
    return _recall(*hit_matrix(ranked, relevant), k)


def hit_rate_at_k(ranked, relevant: Sequence[Iterable[int]], k: int) -> np.ndarray:
    """HR@k per group: 1.0 when at least one relevant item is in the first k, else 0.0."""
    _check_k(k)
    return _hit_rate(*hit_matrix(ranked, relevant), k)


def ndcg_at_k(ranked, relevant: Sequence[Iterable[int]], k: int) -> np.ndarray:
    """NDCG@k per group with binary gains; ideal DCG over min(|relevant|, k) positions."""
    _check_k(k)
    return _ndcg(*hit_matrix(ranked, relevant), k)


def mrr(ranked, relevant: Sequence[Iterable[int]], k: int | None = None) -> np.ndarray:
    """Reciprocal rank of the first hit within the first k (None: the whole list), else 0."""
    _check_k(k, allow_none=True)
    return _mrr(*hit_matrix(ranked, relevant), k)


def rank_metrics(ranked, relevant: Sequence[Iterable[int]], ks: Iterable[int]) -> dict[str, np.ndarray]:
    """Every metric at every cut-off, keyed ``"<metric>@<k>"`` (e.g. ``"ndcg@10"``).

    One hit matrix is computed and shared, so this is what loops over many groups should call.
    Values are per-group float arrays [G] with NaN for groups without relevant items.
    """
    ks = list(ks)
    for k in ks:
        _check_k(k)
    hits, n_rel = hit_matrix(ranked, relevant)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"{RECALL}@{k}"] = _recall(hits, n_rel, k)
        out[f"{NDCG}@{k}"] = _ndcg(hits, n_rel, k)
        out[f"{HIT_RATE}@{k}"] = _hit_rate(hits, n_rel, k)
        out[f"{MRR}@{k}"] = _mrr(hits, n_rel, k)
    return out


def mean_over_groups(values: Mapping[str, np.ndarray]) -> dict[str, tuple[float, int]]:
    """``{name: (mean, groups)}`` over the groups where the metric is defined (NaN skipped)."""
    out = {}
    for name, v in values.items():
        defined = ~np.isnan(v)
        n = int(defined.sum())
        out[name] = (float(v[defined].mean()) if n else float("nan"), n)
    return out
