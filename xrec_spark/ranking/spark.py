"""The one Spark entry of the ranking contract (:mod:`xrec_spark.ranking`): :func:`rank_by_vectors`.

Candidate generation (the model's candidates and the popularity fallback) and evaluation (the
model, ALS, popularity) rank through it, so what is served and what is measured share one
candidate set, one exclusion rule and one tie rule. Each category's item matrix (plus, with
``search="faiss"``, its faiss IVF index) is collected to the driver and broadcast once; user rows
stay distributed, sorted by category inside each partition, and ``mapInPandas`` answers them in
blocks with :mod:`xrec_spark.ranking.kernels`. The collect is the one action here, bounded by the
catalogue (100k items x 64 dims = 25 MB), never by the users.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import Broadcast
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.checks import check_columns
from xrec_spark.config import SearchKind
from xrec_spark.names import CATEGORY, ITEM, RANK, SCORE, USER, VECTOR
from xrec_spark.ranking import kernels
from xrec_spark.ranking.dense import check_k

EXCLUDE = "exclude"   # array<int> of one row's excluded items, inside the engine only
RANKED_SCHEMA = T.StructType([
    T.StructField(USER, T.IntegerType(), False),
    T.StructField(CATEGORY, T.IntegerType(), False),
    T.StructField(RANK, T.IntegerType(), False),
    T.StructField(ITEM, T.IntegerType(), False),
    T.StructField(SCORE, T.DoubleType(), False),
])
RANKED_COLUMNS: tuple[str, ...] = tuple(RANKED_SCHEMA.names)


def _as_search(search_kind: SearchKind | str) -> SearchKind:
    try:
        return SearchKind(search_kind)
    except ValueError:
        raise ValueError(f"batch.search: unknown search {search_kind!r}; "
                         f"allowed: {', '.join(s.value for s in SearchKind)}") from None


def _check_arguments(k: int, block_size: int, search: SearchKind | str) -> SearchKind:
    """Every argument check, before anything is collected; messages name the config keys."""
    check_k(k, "batch.top_k, eval.ks")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 (batch.users_per_block, eval.users_per_block); got {block_size}")
    return _as_search(search)


def _lengths(vectors: pa.ListArray) -> np.ndarray:
    """Element count of each list in an Arrow list array."""
    return np.diff(vectors.offsets.to_numpy())


def collect_catalogues(items: DataFrame, approximate: bool = False, nlist: int = 256,
                       nprobe: int = 32) -> dict[int, kernels.Catalogue]:
    """One :class:`~xrec_spark.ranking.kernels.Catalogue` per category of ``items`` (an action:
    collects the items; rows with a null vector are left out).

    items: item_idx int, category_idx int, vector array<float> [d] (the same d for all).
    """
    check_columns(items, "item vectors", ints=(ITEM, CATEGORY), vectors=(VECTOR,))
    table = items.select(
        F.col(ITEM).cast("int"), F.col(CATEGORY).cast("int"), F.col(VECTOR).cast("array<float>").alias(VECTOR),
    ).where(F.col(VECTOR).isNotNull()).toArrow()
    if table.num_rows == 0:
        return {}
    vectors = table.column(VECTOR).combine_chunks()
    lengths = _lengths(vectors)
    if lengths.min() != lengths.max():
        raise ValueError(f"item vectors: vectors of different lengths ({lengths.min()}..{lengths.max()}); "
                         "every item of one model must have the same dimension")
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, int(lengths[0]))
    ids = table.column(ITEM).to_numpy()
    cats = table.column(CATEGORY).to_numpy()
    return {int(cat): kernels.build_catalogue(int(cat), ids[cats == cat], matrix[cats == cat], approximate,
                                              nlist, nprobe)
            for cat in np.unique(cats)}


def with_exclusions(users: DataFrame, exclude: DataFrame, item_categories: DataFrame) -> DataFrame:
    """``users`` plus ``exclude`` array<int>: the user's excluded items of the row's category.

    users: user_idx, category_idx, ...; exclude: user_idx, item_idx; item_categories:
    item_idx, category_idx. Excluded items of other categories never reach the search.
    """
    check_columns(exclude, "exclude", ints=(USER, ITEM))
    per_pair = (exclude.select(USER, ITEM)
                .join(item_categories.select(ITEM, CATEGORY), ITEM)
                .groupBy(USER, CATEGORY)
                .agg(F.collect_set(F.col(ITEM).cast("int")).alias(EXCLUDE)))
    return users.join(per_pair, [USER, CATEGORY], "left")


def rank_by_vectors(users: DataFrame, items: DataFrame, k: int, exclude: DataFrame | None = None, *,
                    search: SearchKind | str = SearchKind.EXACT, block_size: int = 4096,
                    faiss_nlist: int = 256, faiss_nprobe: int = 32) -> DataFrame:
    """Top ``k`` items by inner product for every (user, category) row of ``users``.

    users: user_idx, category_idx, vector array<float> [d] (one row per pair to rank);
    items: item_idx, category_idx, vector array<float> [d] (the candidates of each category);
    exclude: user_idx, item_idx pairs never to return (items already seen), or None.
    Returns user_idx, category_idx, rank (1..k), item_idx, score (inner product, double), with
    the package's tie rule; rows with a null vector and users of a category without items get
    no rows. ``search``: exact (faiss's flat kernel, blocks of ``block_size`` users) or faiss
    (IVF with ``faiss_nlist`` lists, ``faiss_nprobe`` probed). Collects the item side to the
    driver (module doc); the users stay lazy.
    """
    kind = _check_arguments(k, block_size, search)
    check_columns(users, "user vectors", ints=(USER, CATEGORY), vectors=(VECTOR,))
    catalogues = collect_catalogues(items, kind is SearchKind.FAISS, faiss_nlist, faiss_nprobe)
    sc = users.sparkSession.sparkContext
    broadcasts = {cat: sc.broadcast(catalogue) for cat, catalogue in catalogues.items()}
    # Tokens tell worker caches apart (a worker deserializes each faiss index once).
    tokens = {cat: uuid.uuid4().hex for cat in catalogues}
    threads = int(sc.getConf().get("spark.task.cpus", "1"))

    rows = users.select(
        F.col(USER).cast("int"), F.col(CATEGORY).cast("int"), F.col(VECTOR).cast("array<float>").alias(VECTOR),
    ).where(F.col(VECTOR).isNotNull() & F.col(CATEGORY).isin(list(catalogues) or [-1]))
    if exclude is not None:
        rows = with_exclusions(rows, exclude, items)
    else:
        rows = rows.withColumn(EXCLUDE, F.lit(None).cast("array<int>"))
    # Users of one category next to each other: a batch touches few catalogues.
    rows = rows.sortWithinPartitions(CATEGORY)
    k, block = int(k), int(block_size)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return _search_partition(batches, broadcasts, tokens, k, block, threads)

    return rows.mapInPandas(run, RANKED_SCHEMA)


# One worker process answers many tasks; keep deserialized faiss indexes between them.
_WORKER_INDEXES: dict[str, object] = {}
_MAX_CACHED_INDEXES = 64


def _worker_index(token: str, catalogue: kernels.Catalogue) -> object | None:
    if catalogue.index is None:
        return None
    if token not in _WORKER_INDEXES:
        if len(_WORKER_INDEXES) >= _MAX_CACHED_INDEXES:
            _WORKER_INDEXES.clear()
        _WORKER_INDEXES[token] = kernels.load_index(catalogue)
    return _WORKER_INDEXES[token]


def _stack(vectors: pd.Series, category: int) -> np.ndarray:
    """float32 [rows, d] of one category's user vectors; ValueError naming the lengths found."""
    lengths = vectors.map(len)
    if lengths.nunique() > 1:
        raise ValueError(f"category {category}: user vectors of different lengths {sorted(lengths.unique())[:5]}")
    return np.stack(vectors.to_numpy()).astype(np.float32, copy=False)


def _search_partition(batches: Iterator[pd.DataFrame], broadcasts: dict[int, Broadcast],
                      tokens: dict[int, str], k: int, block_size: int, threads: int) -> Iterator[pd.DataFrame]:
    kernels.set_threads(threads)
    for pdf in batches:
        out = []
        for cat, group in pdf.groupby(CATEGORY, sort=False):
            catalogue: kernels.Catalogue = broadcasts[int(cat)].value
            exclude = [None if e is None else np.asarray(e) for e in group[EXCLUDE].tolist()]
            row, rank, item, score = kernels.top_k(
                catalogue, _stack(group[VECTOR], int(cat)), k,
                exclude if any(e is not None for e in exclude) else None,
                block_size, _worker_index(tokens[int(cat)], catalogue))
            out.append(pd.DataFrame({
                USER: group[USER].to_numpy()[row].astype(np.int32),
                CATEGORY: np.full(row.size, int(cat), dtype=np.int32),
                RANK: rank, ITEM: item, SCORE: score.astype(np.float64),
            }))
        if out:
            yield pd.concat(out, ignore_index=True)


def search_recall(approx: DataFrame, exact: DataFrame) -> float:
    """Mean over (user, category) groups of |approx ∩ exact| / |exact| (an action).

    Both frames: user_idx, category_idx, item_idx (e.g. from :func:`rank_by_vectors` with the
    same k in faiss and exact mode).
    """
    keys = [USER, CATEGORY]
    sizes = exact.groupBy(*keys).agg(F.count("*").alias("n"))
    hits = (approx.select(*keys, ITEM).join(exact.select(*keys, ITEM), [*keys, ITEM])
            .groupBy(*keys).agg(F.count("*").alias("hits")))
    row = (sizes.join(hits, keys, "left")
           .select(F.avg(F.coalesce(F.col("hits"), F.lit(0)) / F.col("n")).alias("recall")).first())
    return float("nan") if row is None or row["recall"] is None else float(row["recall"])
