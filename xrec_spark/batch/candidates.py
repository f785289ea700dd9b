"""Top-K candidate search per (user, category) on Spark, and the popularity fallback.

:func:`top_k_candidates` is the engine: each category's item matrix (plus, in approximate
mode, its faiss IVF index) is broadcast once; user vectors stay distributed, sorted by
category inside each partition, and ``mapInPandas`` answers them in blocks with the kernels of
:mod:`xrec_spark.batch.search`. The item side is collected to the driver to be broadcast: the
one action here, bounded by the catalogue size (100k items x 64 dims = 25 MB), never by users.
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

from xrec_spark.batch import search as kernels
from xrec_spark.config import SearchKind

CANDIDATE_COLUMNS = ("user_idx", "category_idx", "rank", "item_idx", "score")
CANDIDATE_SCHEMA = T.StructType([
    T.StructField("user_idx", T.IntegerType(), False),
    T.StructField("category_idx", T.IntegerType(), False),
    T.StructField("rank", T.IntegerType(), False),
    T.StructField("item_idx", T.IntegerType(), False),
    T.StructField("score", T.DoubleType(), False),
])
_INTS = (T.IntegerType(), T.LongType(), T.ShortType())
_VECTORS = (T.ArrayType(T.FloatType(), True), T.ArrayType(T.FloatType(), False),
            T.ArrayType(T.DoubleType(), True), T.ArrayType(T.DoubleType(), False))


def require_columns(df: DataFrame, where: str, ints: tuple[str, ...] = (), vectors: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming missing columns, TypeError naming wrongly typed ones (no data read)."""
    have = {f.name: f.dataType for f in df.schema.fields}
    missing = [c for c in (*ints, *vectors) if c not in have]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; has {sorted(have)}")
    wrong = [f"{c} ({have[c].simpleString()}, expected an integer)" for c in ints if have[c] not in _INTS]
    wrong += [f"{c} ({have[c].simpleString()}, expected array<float>)" for c in vectors if have[c] not in _VECTORS]
    if wrong:
        raise TypeError(f"{where}: wrong column types: {', '.join(wrong)}")


def _as_search(search_kind: SearchKind | str) -> SearchKind:
    try:
        return SearchKind(search_kind)
    except ValueError:
        raise ValueError(f"batch.search: unknown search {search_kind!r}; "
                         f"allowed: {', '.join(s.value for s in SearchKind)}") from None


def collect_catalogues(item_vectors: DataFrame, approximate: bool = False, nlist: int = 256,
                       nprobe: int = 32) -> dict[int, kernels.Catalogue]:
    """One :class:`kernels.Catalogue` per category of ``item_vectors`` (an action: collects items).

    item_vectors: item_idx int, category_idx int, vector array<float> [d] (same d for all).
    """
    require_columns(item_vectors, "item vectors", ints=("item_idx", "category_idx"), vectors=("vector",))
    table = item_vectors.select(
        F.col("item_idx").cast("int"), F.col("category_idx").cast("int"),
        F.col("vector").cast("array<float>").alias("vector"),
    ).where(F.col("vector").isNotNull()).toArrow()
    if table.num_rows == 0:
        return {}
    vectors = table.column("vector").combine_chunks()
    lengths = pc_lengths(vectors)
    if lengths.min() != lengths.max():
        raise ValueError(f"item vectors: vectors of different lengths ({lengths.min()}..{lengths.max()}); "
                         "every item of one model must have the same dimension")
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, int(lengths[0]))
    items = table.column("item_idx").to_numpy()
    cats = table.column("category_idx").to_numpy()
    out = {}
    for cat in np.unique(cats):
        rows = cats == cat
        out[int(cat)] = kernels.build_catalogue(int(cat), items[rows], matrix[rows], approximate, nlist, nprobe)
    return out


def pc_lengths(vectors: pa.ListArray) -> np.ndarray:
    """Element count of each list in an Arrow list array."""
    offsets = vectors.offsets.to_numpy()
    return np.diff(offsets)


def with_exclusions(users: DataFrame, exclude: DataFrame, item_categories: DataFrame) -> DataFrame:
    """``users`` plus ``exclude`` array<int>: the user's excluded items of the row's category.

    users: user_idx, category_idx, ...; exclude: user_idx, item_idx; item_categories:
    item_idx, category_idx. Excluded items of other categories never reach the search.
    """
    require_columns(exclude, "exclude", ints=("user_idx", "item_idx"))
    per_pair = (exclude.select("user_idx", "item_idx")
                .join(item_categories.select("item_idx", "category_idx"), "item_idx")
                .groupBy("user_idx", "category_idx")
                .agg(F.collect_set(F.col("item_idx").cast("int")).alias("exclude")))
    return users.join(per_pair, ["user_idx", "category_idx"], "left")


def top_k_candidates(user_vectors: DataFrame, item_vectors: DataFrame, k: int,
                     exclude: DataFrame | None = None, search: SearchKind | str = SearchKind.EXACT,
                     block_size: int = 4096, faiss_nlist: int = 256, faiss_nprobe: int = 32) -> DataFrame:
    """Top ``k`` items by inner product for every (user, category) row of ``user_vectors``.

    user_vectors: user_idx, category_idx, vector array<float> [d];
    item_vectors: item_idx, category_idx, vector array<float> [d];
    exclude: user_idx, item_idx pairs never to return (e.g. items already seen), or None.
    Returns user_idx, category_idx, rank (1..k), item_idx, score (inner product, double);
    users of a category without items get no rows. ``search`` exact (faiss's flat kernel,
    blocks of ``block_size`` users) or faiss (IVF with ``faiss_nlist`` lists, ``faiss_nprobe``
    probed). Collects the item side to the driver (see module doc); users stay lazy.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"k must be an int; got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k (batch.top_k) must be >= 1; got {k}")
    if block_size < 1:
        raise ValueError(f"batch.block_size must be >= 1; got {block_size}")
    kind = _as_search(search)
    require_columns(user_vectors, "user vectors", ints=("user_idx", "category_idx"), vectors=("vector",))
    catalogues = collect_catalogues(item_vectors, kind is SearchKind.FAISS, faiss_nlist, faiss_nprobe)
    spark = user_vectors.sparkSession
    sc = spark.sparkContext
    broadcasts = {cat: sc.broadcast(cat_) for cat, cat_ in catalogues.items()}
    # Tokens tell worker caches apart (a worker deserializes each faiss index once).
    tokens = {cat: uuid.uuid4().hex for cat in catalogues}
    threads = int(sc.getConf().get("spark.task.cpus", "1"))

    users = user_vectors.select(
        F.col("user_idx").cast("int"), F.col("category_idx").cast("int"),
        F.col("vector").cast("array<float>").alias("vector"),
    ).where(F.col("vector").isNotNull() & F.col("category_idx").isin(list(catalogues) or [-1]))
    if exclude is not None:
        users = with_exclusions(users, exclude, item_vectors)
    else:
        users = users.withColumn("exclude", F.lit(None).cast("array<int>"))
    # Users of one category next to each other: a batch touches few catalogues.
    users = users.sortWithinPartitions("category_idx")
    block = int(block_size)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return _search_partition(batches, broadcasts, tokens, int(k), block, threads)

    return users.mapInPandas(run, CANDIDATE_SCHEMA)


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


def _search_partition(batches: Iterator[pd.DataFrame], broadcasts: dict[int, Broadcast],
                      tokens: dict[int, str], k: int, block_size: int, threads: int) -> Iterator[pd.DataFrame]:
    kernels.set_threads(threads)
    for pdf in batches:
        out = []
        for cat, group in pdf.groupby("category_idx", sort=False):
            catalogue: kernels.Catalogue = broadcasts[int(cat)].value
            queries = np.stack(group["vector"].to_numpy()).astype(np.float32, copy=False)
            exclude = [None if e is None else np.asarray(e) for e in group["exclude"].tolist()]
            row, rank, item, score = kernels.top_k(
                catalogue, queries, k, exclude if any(e is not None for e in exclude) else None,
                block_size, _worker_index(tokens[int(cat)], catalogue))
            out.append(pd.DataFrame({
                "user_idx": group["user_idx"].to_numpy()[row].astype(np.int32),
                "category_idx": np.full(row.size, int(cat), dtype=np.int32),
                "rank": rank, "item_idx": item, "score": score.astype(np.float64),
            }))
        if out:
            yield pd.concat(out, ignore_index=True)


def popularity_candidates(pairs: DataFrame, item_features: DataFrame, k: int,
                          exclude: DataFrame | None = None, block_size: int = 4096) -> DataFrame:
    """Top ``k`` train-popular items of the category for each (user, category) pair.

    pairs: user_idx, category_idx; item_features: item_idx, category_idx, train_count
    (items with train_count 0 are never proposed); exclude: user_idx, item_idx or None.
    Returns the columns of :func:`top_k_candidates` with score = train_count. It is the same
    exact search with one-dimensional vectors: user [1.0], item [train_count].
    """
    require_columns(pairs, "fallback pairs", ints=("user_idx", "category_idx"))
    require_columns(item_features, "item features", ints=("item_idx", "category_idx", "train_count"))
    items = (item_features.where(F.col("train_count") > 0)
             .select("item_idx", "category_idx", F.array(F.col("train_count").cast("float")).alias("vector")))
    users = pairs.select("user_idx", "category_idx", F.array(F.lit(1.0).cast("float")).alias("vector"))
    return top_k_candidates(users, items, k, exclude, SearchKind.EXACT, block_size)


def search_recall(approx: DataFrame, exact: DataFrame) -> float:
    """Mean over (user, category) groups of |approx ∩ exact| / |exact| (an action).

    Both frames: user_idx, category_idx, item_idx (e.g. from :func:`top_k_candidates` with the
    same k in faiss and exact mode).
    """
    keys = ["user_idx", "category_idx"]
    sizes = exact.groupBy(*keys).agg(F.count("*").alias("n"))
    hits = (approx.select(*keys, "item_idx").join(exact.select(*keys, "item_idx"), [*keys, "item_idx"])
            .groupBy(*keys).agg(F.count("*").alias("hits")))
    row = (sizes.join(hits, keys, "left")
           .select(F.avg(F.coalesce(F.col("hits"), F.lit(0)) / F.col("n")).alias("recall")).first())
    return float("nan") if row is None or row["recall"] is None else float(row["recall"])
