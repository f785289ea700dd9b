"""Full ranking by inner products, per category, distributed with ``cogroup().applyInPandas``.

Every system that can be written as "a vector per (user, category) and a vector per item"
(the two-tower model, ALS factors, popularity as a 1-d vector) is ranked by this one function,
so all systems share the same candidate set, exclusion rule and tie rule:

- candidates: **all** items of the category that have a vector (no sampled negatives);
- excluded: the items the user has already interacted with (``seen``);
- ties: lower ``item_idx`` first (items are scored in ascending id order and
  :func:`xrec_spark.eval.ranking.top_k` keeps the lower column on ties).

Each category is one task; users are scored in blocks of ``block_size`` rows so memory stays at
``block_size x items_in_category`` floats.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.eval import columns as C
from xrec_spark.eval.metrics import require_columns
from xrec_spark.eval.ranking import top_k

VECTOR = "vector"
SEEN = "_seen"

RANKINGS_SCHEMA = T.StructType([
    T.StructField(C.USER, T.IntegerType(), False),
    T.StructField(C.CATEGORY, T.IntegerType(), False),
    T.StructField(C.RANK, T.IntegerType(), False),
    T.StructField(C.ITEM, T.IntegerType(), False),
    T.StructField(C.SCORE, T.DoubleType(), False),
])


def _stack(vectors: pd.Series, where: str) -> np.ndarray:
    if len(vectors) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = vectors.map(len)
    if lengths.nunique() != 1:
        raise ValueError(f"{where}: vectors of different lengths {sorted(lengths.unique())[:5]}")
    return np.stack(vectors.to_numpy()).astype(np.float32, copy=False)


def _rank_category(users: pd.DataFrame, items: pd.DataFrame, k: int, block_size: int) -> pd.DataFrame:
    """Top-k items of one category for each user row (vector, seen) of that category."""
    if users.empty or items.empty:
        return pd.DataFrame({f.name: pd.Series(dtype="int32" if f.name != C.SCORE else "float64")
                             for f in RANKINGS_SCHEMA.fields})
    category = int(users[C.CATEGORY].iloc[0])
    items = items.sort_values(C.ITEM, kind="stable")
    item_ids = items[C.ITEM].to_numpy(dtype=np.int64)
    item_matrix = _stack(items[VECTOR], f"item vectors of category {category}")
    user_matrix = _stack(users[VECTOR], f"user vectors of category {category}")
    if user_matrix.shape[1] != item_matrix.shape[1]:
        raise ValueError(f"category {category}: user vectors have {user_matrix.shape[1]} dims, "
                         f"item vectors {item_matrix.shape[1]}")
    user_ids = users[C.USER].to_numpy(dtype=np.int64)
    seen = users[SEEN].tolist()
    out = []
    for start in range(0, len(users), block_size):
        stop = min(len(users), start + block_size)
        scores = user_matrix[start:stop] @ item_matrix.T            # [block, items]
        mask = np.zeros(scores.shape, dtype=bool)
        for row, seen_items in enumerate(seen[start:stop]):
            if seen_items is None or len(seen_items) == 0:
                continue
            wanted = np.asarray(seen_items, dtype=np.int64)
            cols = np.searchsorted(item_ids, wanted)
            inside = cols < len(item_ids)
            cols, wanted = cols[inside], wanted[inside]
            mask[row, cols[item_ids[cols] == wanted]] = True
        top = top_k(scores, k, mask)                               # [block, k], -1 = none
        rows, ranks = np.nonzero(top >= 0)
        cols = top[rows, ranks]
        out.append(pd.DataFrame({
            C.USER: user_ids[start:stop][rows].astype(np.int32),
            C.CATEGORY: np.full(len(rows), category, dtype=np.int32),
            C.RANK: (ranks + 1).astype(np.int32),
            C.ITEM: item_ids[cols].astype(np.int32),
            C.SCORE: scores[rows, cols].astype(np.float64),
        }))
    return pd.concat(out, ignore_index=True)


def rank_by_vectors(users: DataFrame, items: DataFrame, seen: DataFrame, k: int, system: str,
                    block_size: int = 1024) -> DataFrame:
    """Top-k ranked items per (user, category) by inner product, over all the category's items.

    In: ``users`` user_idx, category_idx, vector array<float> (one row per pair to rank);
    ``items`` item_idx, category_idx, vector array<float> (the candidates of each category);
    ``seen`` user_idx, item_idx (interactions known before the evaluated period: excluded).
    Out: system, user_idx, category_idx, rank (1..k), item_idx, score.
    """
    require_columns(users, (C.USER, C.CATEGORY, VECTOR), "rank_by_vectors users")
    require_columns(items, (C.ITEM, C.CATEGORY, VECTOR), "rank_by_vectors items")
    require_columns(seen, (C.USER, C.ITEM), "rank_by_vectors seen")
    if k < 1 or block_size < 1:
        raise ValueError(f"rank_by_vectors: k and block_size must be >= 1; got k={k}, block_size={block_size}")
    item_cat = items.select(C.ITEM, C.CATEGORY)
    seen_per_pair = (seen.select(C.USER, C.ITEM).distinct().join(item_cat, C.ITEM)
                     .groupBy(C.USER, C.CATEGORY).agg(F.collect_list(F.col(C.ITEM).cast("int")).alias(SEEN)))
    user_rows = (users.select(C.USER, C.CATEGORY, VECTOR)
                 .join(seen_per_pair, [C.USER, C.CATEGORY], "left"))

    def rank(users_pdf: pd.DataFrame, items_pdf: pd.DataFrame) -> pd.DataFrame:
        return _rank_category(users_pdf, items_pdf, k, block_size)

    ranked = (user_rows.groupBy(C.CATEGORY)
              .cogroup(items.select(C.ITEM, C.CATEGORY, VECTOR).groupBy(C.CATEGORY))
              .applyInPandas(rank, schema=RANKINGS_SCHEMA))
    return ranked.select(F.lit(system).alias(C.SYSTEM), *RANKINGS_SCHEMA.names)


def constant_user_vectors(pairs: DataFrame, dim: int = 1) -> DataFrame:
    """A vector of ones for every (user, category) pair: scoring then reduces to the item vector
    (``item . 1``), which is how popularity ranks (items' vector = [popularity])."""
    ones = F.array(*[F.lit(1.0).cast("float") for _ in range(dim)])
    return pairs.select(C.USER, C.CATEGORY).distinct().withColumn(VECTOR, ones)
