"""Top-K of a dense score matrix in pure numpy (no pyspark, no torch).

For systems whose scores are not an inner product of two exported vectors (EASE, training's
early-stopping validation) and as the brute-force reference the faiss kernels are tested
against. Tie rule, the one of the whole :mod:`xrec_spark.ranking` package: equal scores are
ordered by the lower column index first (a stable sort by descending score); with columns in
ascending item order that is "lower item_idx first".
"""

from __future__ import annotations

import numpy as np


def check_k(k: int, setting: str = "") -> None:
    """TypeError unless ``k`` is an int (bool is not), ValueError unless ``k >= 1``; ``setting``
    names the config keys that give ``k`` in the messages."""
    keys = f" ({setting})" if setting else ""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"k must be an int{keys}; got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1{keys}; got {k}")


def top_k(scores: np.ndarray, k: int, exclude_mask: np.ndarray | None = None) -> np.ndarray:
    """Column indices of the k best scores per row, best first: int64 ``[G, min(k, N)]``.

    Ties: lower column index first. Excluded columns (``exclude_mask`` True, e.g. the user's
    train items or the padding column 0), NaN and -inf scores are never returned; a row with
    fewer than k eligible columns is filled with ``-1`` after its eligible ones.
    Cost O(G*N) selection plus O(G*k log k) sorting, so it suits large catalogues.
    """
    check_k(k)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D [groups, items]; got shape {s.shape}")
    if exclude_mask is not None:
        mask = np.asarray(exclude_mask, dtype=bool)
        if mask.shape != s.shape:
            raise ValueError(f"exclude_mask shape {mask.shape} differs from scores shape {s.shape}")
        s = np.where(mask, -np.inf, s)
    s = np.where(np.isnan(s), -np.inf, s)
    groups, n = s.shape
    kk = min(k, n)
    if groups == 0 or kk == 0:
        return np.zeros((groups, kk), dtype=np.int64)
    # Threshold = k-th largest score per row; take everything above it, then the lowest-index
    # columns equal to it until k are taken (this is what makes ties deterministic).
    kth = -np.partition(-s, kk - 1, axis=1)[:, kk - 1]
    above = s > kth[:, None]
    equal = s == kth[:, None]
    need = kk - above.sum(axis=1)
    chosen = above | (equal & (np.cumsum(equal, axis=1) <= need[:, None]))
    cols = np.nonzero(chosen)[1].reshape(groups, kk)          # ascending column order per row
    vals = np.take_along_axis(s, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")           # stable: ties keep index order
    cols = np.take_along_axis(cols, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    return np.where(np.isneginf(vals), -1, cols)


def ranked_items(scores: np.ndarray, item_ids: np.ndarray, k: int,
                 exclude_mask: np.ndarray | None = None) -> np.ndarray:
    """:func:`top_k` mapped to item ids (column j is item ``item_ids[j]``), 0 where no item.

    Returns int64 ``[G, min(k, N)]``, directly usable as ``ranked`` by the metric functions of
    :mod:`xrec_spark.eval.reference_metrics`.
    """
    ids = np.asarray(item_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.shape[0] != np.shape(scores)[-1]:
        raise ValueError(f"item_ids must be 1-D with one id per score column ({np.shape(scores)[-1]}); "
                         f"got shape {ids.shape}")
    cols = top_k(scores, k, exclude_mask)
    return np.where(cols >= 0, ids[np.maximum(cols, 0)], 0)
