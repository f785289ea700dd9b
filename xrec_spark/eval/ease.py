"""EASE (Steck, WWW 2019): a closed-form item-item baseline, fitted and scored on the driver.

Fit, over the ``N`` most popular train items of **all** categories (so links between items of
different categories carry over to a category the user never touched)::

    X  = binary user x item matrix of train positives (train split only), restricted to the N items
    P  = (XᵀX + λI)⁻¹
    B  = I − P · diag(1 / diag(P))          (zero diagonal: an item never explains itself)

Score of a (user, category) pair: ``x_u · B`` over the category's items inside the N; the
category's items outside the N rank below every one of them, by train popularity
(``train_count``, then lower item_idx). Seen items are excluded and ties go to the lower
item_idx, exactly as :func:`xrec_spark.ranking.spark.rank_by_vectors` ranks the other systems.
Users with no train positive among the N items have ``x_u = 0`` and get no list (like ALS for
users without factors: their groups score 0).

Memory is a few N x N float32 arrays (N = 10,000: 0.4 GB each) plus the dense rows of X for a
block of users; time is one N x N inversion per λ (O(N³)) plus ``pairs x N x items-in-N`` for the
scores. Everything runs in numpy on the driver: B is small enough, and the evaluated pairs and
their seen items are collected once.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from xrec_spark.checks import check_columns
from xrec_spark.config import Baseline
from xrec_spark.eval import columns as C
from xrec_spark.eval.metrics import system_rankings
from xrec_spark.eval.reference_metrics import ndcg_at_k
from xrec_spark.model.autoencoder import dense_rows
from xrec_spark.ranking.dense import top_k
from xrec_spark.ranking.spark import RANKED_SCHEMA

log = logging.getLogger(__name__)

EASE_NAME = Baseline.EASE.value
_BLOCK = 2048  # users per dense block of X (memory: block x N float32)
# Scores of a block of users' rows x ``[b, N]`` for the item columns ``cols`` ``[C]`` -> ``[b, C]``:
# EASE's x·B[:, cols] here, the autoencoder's decoded logits in :mod:`xrec_spark.eval.baselines`.
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EaseData:
    """Driver-side inputs of EASE (and of the ``dae`` autoencoder, which reads the same rows).

    ``items``: the N modelled item ids (most popular first is not required; column j of X and B
    is item ``items[j]``). ``user_rows``: user_idx -> the column indices of its train positives
    among the N. ``catalogue``: item_idx, category_idx, train_count of every item.
    """

    items: np.ndarray
    user_rows: dict[int, np.ndarray]
    catalogue: pd.DataFrame
    gram: np.ndarray | None = field(default=None, repr=False)   # XᵀX, float64 [N, N] (EASE only)


def weights_scorer(weights: np.ndarray) -> Scorer:
    """EASE's scores x·B for the columns asked (``weights`` = B ``[N, N]``)."""
    return lambda x, cols: x @ weights[:, cols]


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """B = I − P·diag(1/diag(P)) with P = (G + λI)⁻¹, float32 ``[N, N]`` (diagonal exactly 0).

    ``gram`` is XᵀX ``[N, N]``. The inversion runs in float64 (N = 10k: 0.8 GB) because the
    Gram matrix of popular items is ill-conditioned for small λ; B is returned as float32.
    """
    if lam <= 0:
        raise ValueError(f"eval.ease_lambdas: lambda must be > 0; got {lam}")
    g = np.array(gram, dtype=np.float64, copy=True)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    del g
    b = p / -np.diag(p)[None, :]           # column j divided by -P_jj
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def top_items(catalogue: pd.DataFrame, n: int) -> np.ndarray:
    """item_idx of the ``n`` most popular items with train positives (train_count, then lower id)."""
    ranked = catalogue[catalogue["train_count"] > 0].sort_values(["train_count", C.ITEM],
                                                                ascending=[False, True], kind="stable")
    return ranked[C.ITEM].to_numpy(dtype=np.int64)[:n]


def _dense_rows(rows: list[np.ndarray], n_items: int) -> np.ndarray:
    """X's rows for a block of users, float32 ``[len(rows), n_items]`` (the autoencoder's own
    multi-hot builder, as numpy)."""
    return dense_rows(rows, n_items).numpy()


def gram_matrix(user_rows: dict[int, np.ndarray], n_items: int) -> np.ndarray:
    """XᵀX (float64 ``[N, N]``) from each user's positive columns, in dense blocks of users."""
    rows = [cols for cols in user_rows.values() if len(cols)]
    gram = np.zeros((n_items, n_items), dtype=np.float64)
    for start in range(0, len(rows), _BLOCK):
        x = _dense_rows(rows[start:start + _BLOCK], n_items)
        gram += (x.T @ x).astype(np.float64)   # exact: counts < 2^24 in float32
    return gram


def collect_ease_data(positives: DataFrame, item_features: DataFrame, n_items: int,
                      with_gram: bool = True) -> EaseData:
    """Collect train positives (user_idx, item_idx) and the catalogue; build X's rows and (with
    ``with_gram``) XᵀX."""
    check_columns(item_features, "EASE item features", (C.ITEM, C.CATEGORY, "train_count"))
    catalogue = item_features.select(C.ITEM, C.CATEGORY, "train_count").toPandas()
    items = top_items(catalogue, n_items)
    column = pd.Series(np.arange(len(items), dtype=np.int64), index=items)
    pos = positives.select(C.USER, C.ITEM).toPandas()
    pos = pos[pos[C.ITEM].isin(column.index)]
    pos = pos.assign(col=column.reindex(pos[C.ITEM].to_numpy()).to_numpy())
    user_rows = {int(u): np.sort(g["col"].to_numpy(dtype=np.int64)) for u, g in pos.groupby(C.USER)}
    return EaseData(items, user_rows, catalogue, gram_matrix(user_rows, len(items)) if with_gram else None)


@dataclass(frozen=True)
class _Category:
    cols: np.ndarray        # columns of B of the category's items inside N, by ascending item_idx
    inside: np.ndarray      # their item ids (ascending)
    outside: np.ndarray     # the category's other items, by train_count desc then item_idx


def _categories(data: EaseData) -> dict[int, _Category]:
    column = {int(i): j for j, i in enumerate(data.items)}
    out: dict[int, _Category] = {}
    for cat, part in data.catalogue.groupby(C.CATEGORY):
        part = part.sort_values(C.ITEM, kind="stable")
        ids = part[C.ITEM].to_numpy(dtype=np.int64)
        inside = np.array([i in column for i in ids], dtype=bool)
        rest = part[~inside].sort_values(["train_count", C.ITEM], ascending=[False, True], kind="stable")
        out[int(cat)] = _Category(np.array([column[int(i)] for i in ids[inside]], dtype=np.int64),
                                  ids[inside], rest[C.ITEM].to_numpy(dtype=np.int64))
    return out


def rank_pairs(data: EaseData, scorer: Scorer, pairs: pd.DataFrame, seen: dict[int, set[int]],
               k: int) -> pd.DataFrame:
    """Top-k per (user_idx, category_idx) row of ``pairs`` by ``scorer``, in RANKED_SCHEMA columns.

    Outside-N items carry score ``lowest inside score − 1 − position`` so that the score column
    orders like the rank column.
    """
    out: list[pd.DataFrame] = []
    cats = _categories(data)
    for cat, group in pairs.groupby(C.CATEGORY, sort=True):
        info = cats.get(int(cat))
        users = [int(u) for u in group[C.USER] if int(u) in data.user_rows]
        if info is None or not users:
            continue
        for start in range(0, len(users), _BLOCK):
            block = users[start:start + _BLOCK]
            x = _dense_rows([data.user_rows[u] for u in block], len(data.items))
            scores = scorer(x, info.cols)                           # [block, items of cat in N]
            out.append(_block_lists(block, int(cat), scores, info, seen, k))
    if not out:
        return pd.DataFrame({f.name: pd.Series(dtype="float64" if f.name == C.SCORE else "int32")
                             for f in RANKED_SCHEMA.fields})
    return pd.concat(out, ignore_index=True)


def _block_lists(users: list[int], cat: int, scores: np.ndarray, info: _Category,
                 seen: dict[int, set[int]], k: int) -> pd.DataFrame:
    mask = np.zeros(scores.shape, dtype=bool)
    for r, u in enumerate(users):
        s = seen.get(u)
        if s and len(info.inside):
            wanted = np.fromiter(s, dtype=np.int64, count=len(s))
            cols = np.minimum(np.searchsorted(info.inside, wanted), len(info.inside) - 1)
            mask[r, cols[info.inside[cols] == wanted]] = True
    top = top_k(scores, k, mask) if scores.shape[1] else np.zeros((len(users), 0), dtype=np.int64)
    rows_u, rows_r, rows_i, rows_s = [], [], [], []
    for r, u in enumerate(users):
        chosen = [int(c) for c in top[r] if c >= 0]
        items = [int(info.inside[c]) for c in chosen]
        vals = [float(scores[r, c]) for c in chosen]
        if len(items) < k and len(info.outside):
            floor = (min(vals) if vals else 0.0) - 1.0
            s = seen.get(u, set())
            for item in info.outside:
                if len(items) >= k:
                    break
                if int(item) not in s:
                    items.append(int(item))
                    vals.append(floor - (len(items) - len(chosen) - 1))
        rows_u += [u] * len(items)
        rows_r += list(range(1, len(items) + 1))
        rows_i += items
        rows_s += vals
    return pd.DataFrame({C.USER: np.array(rows_u, dtype=np.int32), C.CATEGORY: np.full(len(rows_u), cat, np.int32),
                         C.RANK: np.array(rows_r, dtype=np.int32), C.ITEM: np.array(rows_i, dtype=np.int32),
                         C.SCORE: np.array(rows_s, dtype=np.float64)})


def mean_ndcg(lists: pd.DataFrame, groups: pd.DataFrame, k: int) -> tuple[float, int]:
    """(mean NDCG@k, groups) of rankings ``lists`` over ``groups`` (user_idx, category_idx,
    relevant); a group without a list scores 0, as in :func:`xrec_spark.eval.metrics.group_metrics`."""
    if groups.empty:
        return 0.0, 0
    top = lists[lists[C.RANK] <= k].sort_values([C.USER, C.CATEGORY, C.RANK])
    by_pair = {key: g[C.ITEM].to_numpy(dtype=np.int64) for key, g in top.groupby([C.USER, C.CATEGORY])}
    ranked = np.zeros((len(groups), k), dtype=np.int64)
    for r, (u, c) in enumerate(zip(groups[C.USER], groups[C.CATEGORY])):
        items = by_pair.get((u, c))
        if items is not None:
            ranked[r, :len(items)] = items
    values = ndcg_at_k(ranked, [np.asarray(x, dtype=np.int64) for x in groups[C.RELEVANT]], k)
    defined = ~np.isnan(values)
    return (float(values[defined].mean()) if defined.any() else 0.0), int(defined.sum())


def seen_by_user(seen: DataFrame, users: DataFrame) -> dict[int, set[int]]:
    """user_idx -> items seen before the period, for the users in ``users`` (collected)."""
    rows = seen.join(users.select(C.USER).distinct(), C.USER).toPandas()
    return {int(u): set(g[C.ITEM].astype(int)) for u, g in rows.groupby(C.USER)}


def pair_rankings(spark: SparkSession, data: EaseData, scorer: Scorer, pairs: DataFrame,
                  seen: DataFrame, k: int, system: str = EASE_NAME) -> DataFrame:
    """Rankings DataFrame (system, user_idx, category_idx, rank, item_idx, score) of ``pairs``."""
    check_columns(pairs, f"{system} pairs", (C.USER, C.CATEGORY))
    local_pairs = pairs.select(C.USER, C.CATEGORY).distinct().toPandas()
    lists = rank_pairs(data, scorer, local_pairs, seen_by_user(seen, pairs), k)
    return system_rankings(spark.createDataFrame(lists[RANKED_SCHEMA.names], RANKED_SCHEMA), system)


def peak_rss_gib() -> float:
    """Peak resident memory of this (driver) process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Stopwatch:
    """Seconds since construction (for the EASE / ALS timing lines in the log)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
