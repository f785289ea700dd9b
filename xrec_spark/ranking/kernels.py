"""Maximum-inner-product search of one category's items: numpy + faiss, no Spark.

These run inside Spark's Python workers (:mod:`xrec_spark.ranking.spark` ships them through
``mapInPandas``) and in plain processes (benchmarks, tests). A :class:`Catalogue` holds one
category's item matrix; :func:`top_k` answers a block of user vectors against it, exactly or
through a faiss IVF index, with per-user excluded items removed.

Why faiss's flat kernel for the exact search rather than ``U @ X.T`` + ``np.argpartition``: it
is the same blocked GEMM, but it keeps the top K in a heap while each tile of scores is still in
cache, where a separate selection pass over the score matrix costs several times the product
(the measurements are in BENCHMARKS.md, section Candidates; ``bench/candidates.py`` reruns them).

faiss keeps equal scores in the order it meets them, also at the K-th place, so the exact search
asks for one result more than it needs: when a kept item's score equals the smallest score
returned, an item faiss did not return may tie with it, and that row is ranked again from its
full score row by :func:`xrec_spark.ranking.dense.top_k` (ties: lower item_idx). Rows of trained
embeddings almost never tie; popularity (one dimension, many equal counts) often does, and then
costs what a dense ranking costs. Results are exact either way; the tests check them against a
brute-force numpy reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from xrec_spark.ranking import dense

try:  # faiss-cpu is a declared dependency; the import error is re-raised with advice below.
    import faiss
except ImportError as _faiss_error:  # pragma: no cover - exercised only on broken installs
    faiss = None
    _FAISS_IMPORT_ERROR: ImportError | None = _faiss_error
else:
    _FAISS_IMPORT_ERROR = None

# faiss's k-means warns below 39 training points per list; fewer lists than this is not worth
# an index (a brute-force pass over such a small category is as cheap).
MIN_POINTS_PER_LIST = 39
MIN_LISTS = 4
# Seed of faiss's k-means (IVF training): same catalogue, same index, same candidates.
IVF_SEED = 1234
# Scores held at once when rows are re-ranked densely (float32: 16 MiB, plus top_k's copies).
_DENSE_CELLS = 1 << 22

Hits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]   # (row, rank, item_idx, score), flat


def _require_faiss() -> None:
    if faiss is None:
        raise RuntimeError(
            "faiss is not importable (faiss-cpu is a dependency of xrec-spark: "
            f"pip install 'faiss-cpu>=1.11,<1.12'): {_FAISS_IMPORT_ERROR}"
        )


def set_threads(n: int) -> None:
    """Threads faiss may use in this process (one Spark task = ``spark.task.cpus`` threads)."""
    _require_faiss()
    faiss.omp_set_num_threads(max(1, int(n)))


@dataclass(frozen=True)
class Catalogue:
    """One category's items.

    item_idx: int32 [n], ascending; matrix: float32 [n, d], row i is item ``item_idx[i]``;
    index: a serialized faiss IVF index over ``matrix`` (uint8 [bytes]) searched with
    ``nprobe`` lists, or None for exact search.
    """

    category_idx: int
    item_idx: np.ndarray
    matrix: np.ndarray
    index: np.ndarray | None = None
    nprobe: int = 1

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def size(self) -> int:
        return int(self.matrix.shape[0])


def ivf_lists(n_items: int, nlist: int) -> int:
    """Lists an IVF index over ``n_items`` gets: ``nlist`` capped so each list has >= 39
    training points; 0 means "too small for an index, search exactly"."""
    lists = min(int(nlist), n_items // MIN_POINTS_PER_LIST)
    return lists if lists >= MIN_LISTS else 0


def build_catalogue(category_idx: int, item_idx: np.ndarray, vectors: np.ndarray,
                    approximate: bool = False, nlist: int = 256, nprobe: int = 32) -> Catalogue:
    """A :class:`Catalogue` from item ids [n] and vectors [n, d] (any order; sorted here).

    With ``approximate`` an IVF-flat inner-product index with :func:`ivf_lists` lists is
    trained (seeded k-means) and serialized, so it can be broadcast as bytes.
    """
    ids = np.asarray(item_idx, dtype=np.int64)
    mat = np.asarray(vectors, dtype=np.float32)
    if mat.ndim != 2 or mat.shape[0] != ids.shape[0]:
        raise ValueError(f"category {category_idx}: vectors must be [n_items, d] with one row per "
                         f"item_idx; got vectors {mat.shape} for {ids.shape[0]} items")
    if ids.size and ids.min() < 1:
        raise ValueError(f"category {category_idx}: item_idx must be >= 1 (0 is padding); got {ids.min()}")
    if np.unique(ids).size != ids.size:
        raise ValueError(f"category {category_idx}: duplicate item_idx in the item vectors")
    order = np.argsort(ids, kind="stable")
    ids, mat = ids[order].astype(np.int32), np.ascontiguousarray(mat[order])
    lists = ivf_lists(ids.size, nlist) if approximate else 0
    if not lists:
        return Catalogue(int(category_idx), ids, mat)
    _require_faiss()
    quantizer = faiss.IndexFlatIP(mat.shape[1])
    index = faiss.IndexIVFFlat(quantizer, mat.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = IVF_SEED
    index.train(mat)
    index.add(mat)
    return Catalogue(int(category_idx), ids, mat, faiss.serialize_index(index), min(int(nprobe), lists))


def _search(catalogue: Catalogue, index: object | None, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 [b, k], positions int64 [b, k]); position -1 = no result."""
    if index is not None:
        return index.search(queries, k)  # type: ignore[attr-defined]
    _require_faiss()
    return faiss.knn(queries, catalogue.matrix, k, metric=faiss.METRIC_INNER_PRODUCT)


def load_index(catalogue: Catalogue) -> object | None:
    """The deserialized faiss index of an approximate catalogue (None for exact ones)."""
    if catalogue.index is None:
        return None
    _require_faiss()
    index = faiss.deserialize_index(catalogue.index)
    faiss.extract_index_ivf(index).nprobe = catalogue.nprobe
    return index


def _no_hits() -> Hits:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty.astype(np.int32), empty.astype(np.int32), np.zeros(0, dtype=np.float32)


def top_k(catalogue: Catalogue, queries: np.ndarray, k: int,
          exclude: Sequence[np.ndarray | None] | None = None, block_size: int = 4096,
          index: object | None = None) -> Hits:
    """Top ``k`` items of the catalogue by inner product for each query row.

    queries: float32 [b, d]; exclude: b arrays of item_idx to leave out (None = none);
    index: :func:`load_index` of the catalogue for approximate search (None = exact).
    Returns flat arrays (row [m], rank [m] 1-based, item_idx [m], score [m]) ordered by row,
    then score descending, ties by item_idx ascending; a row gets fewer than ``k`` results
    only when the category has fewer than ``k`` items left after exclusion.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != catalogue.dim:
        dims = q.shape[1] if q.ndim == 2 else q.shape
        raise ValueError(f"category {catalogue.category_idx}: user vectors have {dims} dims, item vectors "
                         f"{catalogue.dim}; export users and items with one model")
    n_ex = np.zeros(q.shape[0], dtype=np.int64)
    if exclude is not None:
        n_ex = np.fromiter((0 if e is None else len(e) for e in exclude), dtype=np.int64, count=q.shape[0])
    # Users with few exclusions first, so a heavy user does not widen every block's search.
    order = np.argsort(n_ex, kind="stable")
    parts = []
    for start in range(0, q.shape[0], block_size):
        rows = order[start:start + block_size]
        parts.append(_top_k_block(catalogue, index, q[rows], rows, k,
                                  None if exclude is None else [exclude[r] for r in rows], int(n_ex[rows].max())))
    if not parts:
        return _no_hits()
    row, rank, item, score = (np.concatenate(p) for p in zip(*parts))
    by_row = np.argsort(row, kind="stable")
    return row[by_row], rank[by_row], item[by_row], score[by_row]


def _top_k_block(catalogue: Catalogue, index: object | None, q: np.ndarray, rows: np.ndarray, k: int,
                 exclude: list[np.ndarray | None] | None, most_excluded: int) -> Hits:
    exact = index is None
    # Ask for k + (largest exclusion list in the block) so that k survive the filter; an exact
    # search one more, to see whether a tie crosses the cut (module doc).
    k_eff = min(catalogue.size, k + most_excluded + int(exact))
    if k_eff == 0:
        return _no_hits()
    scores, pos = _search(catalogue, index, q, k_eff)
    items = np.where(pos >= 0, catalogue.item_idx[np.clip(pos, 0, None)], 0).astype(np.int64)
    keep = pos >= 0
    if exclude is not None and most_excluded:
        keep &= ~_excluded_mask(items, exclude)
    # Deterministic order: score descending, equal scores by item_idx (faiss leaves ties as found).
    order = np.lexsort((items, -scores.astype(np.float64)), axis=-1)
    items = np.take_along_axis(items, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    found = np.take_along_axis(pos >= 0, order, axis=1)
    keep = np.take_along_axis(keep, order, axis=1)
    rank = np.cumsum(keep, axis=1)
    keep &= rank <= k
    redo = np.zeros(len(rows), dtype=bool)
    if exact and k_eff < catalogue.size:
        # Everything not returned scores <= the smallest returned score: a kept item equal to it
        # may lose its place to an unreturned item with a lower item_idx.
        redo = found.all(axis=1) & (keep & (scores == scores[:, -1:])).any(axis=1)
    keep[redo] = False
    r, c = np.nonzero(keep)
    hits = (rows[r].astype(np.int64), rank[r, c].astype(np.int32), items[r, c].astype(np.int32), scores[r, c])
    if not redo.any():
        return hits
    again = np.flatnonzero(redo)
    ranked = _dense_top_k(catalogue, q[again], rows[again], k, None if exclude is None else [exclude[i] for i in again])
    return tuple(np.concatenate(pair) for pair in zip(hits, ranked))  # type: ignore[return-value]


def _dense_top_k(catalogue: Catalogue, q: np.ndarray, rows: np.ndarray, k: int,
                 exclude: list[np.ndarray | None] | None) -> Hits:
    """The rows' top ``k`` from their full score rows (every item scored), ties by item_idx."""
    step = max(1, _DENSE_CELLS // max(1, catalogue.size))
    parts = []
    for start in range(0, len(rows), step):
        stop = min(len(rows), start + step)
        scores = q[start:stop] @ catalogue.matrix.T                        # float32 [b, n]
        mask = None if exclude is None else _excluded_columns(catalogue.item_idx, exclude[start:stop])
        cols = dense.top_k(scores, k, mask)                                 # [b, <=k], -1 = none
        r, c = np.nonzero(cols >= 0)
        picked = cols[r, c]
        parts.append((rows[start:stop][r].astype(np.int64), (c + 1).astype(np.int32),
                      catalogue.item_idx[picked].astype(np.int32), scores[r, picked]))
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def _excluded_columns(item_idx: np.ndarray, exclude: list[np.ndarray | None]) -> np.ndarray:
    """bool [b, n]: column j of row r is an item of exclude[r] (``item_idx`` ascending)."""
    mask = np.zeros((len(exclude), item_idx.size), dtype=bool)
    for r, e in enumerate(exclude):
        if e is None or not len(e):
            continue
        wanted = np.asarray(e, dtype=np.int64)
        cols = np.searchsorted(item_idx, wanted)
        inside = cols < item_idx.size
        cols, wanted = cols[inside], wanted[inside]
        mask[r, cols[item_idx[cols] == wanted]] = True
    return mask


def _excluded_mask(items: np.ndarray, exclude: list[np.ndarray | None]) -> np.ndarray:
    """bool [b, k]: items[r, j] is in exclude[r] (one vectorized isin over (row, item) keys)."""
    lens = np.fromiter((0 if e is None else len(e) for e in exclude), dtype=np.int64, count=len(exclude))
    ex = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude if e is not None and len(e)])
    stride = int(max(items.max(initial=0), ex.max(initial=0))) + 1
    ex_keys = np.repeat(np.arange(len(exclude), dtype=np.int64), lens) * stride + ex
    keys = np.arange(items.shape[0], dtype=np.int64)[:, None] * stride + items
    return np.isin(keys, ex_keys)


def recall(approx: Sequence[np.ndarray], exact: Sequence[np.ndarray]) -> float:
    """Mean over rows of |approx_r ∩ exact_r| / |exact_r| (rows with an empty exact set skipped)."""
    values = [len(np.intersect1d(a, e)) / len(e) for a, e in zip(approx, exact) if len(e)]
    return float(np.mean(values)) if values else float("nan")
