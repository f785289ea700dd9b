"""Baselines on the same split, ranked by the same code as the model (:mod:`scoring`).

- ``popularity_category``: items of the category by train positives (most popular first).
- ``popularity_global``: one list over all items by train positives, ignoring the category;
  it shows what ignoring the category costs (items of other categories are never relevant).
- ``als``: Spark ML ALS with ``implicitPrefs=True`` on the train positives; rank / regParam /
  alpha chosen on the **valid** split (NDCG@k of all valid groups), never on test; items of the
  category ranked by the dot product of the factors (full ranking within the category).

All baselines are fitted on train positives only, like the model.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xrec_spark.config import EvalConfig
from xrec_spark.eval import columns as C
from xrec_spark.eval.metrics import group_metrics, ranked_lists, relevant_groups, require_columns
from xrec_spark.eval.scoring import VECTOR, constant_user_vectors, rank_by_vectors

log = logging.getLogger(__name__)

POP_CATEGORY, POP_GLOBAL, ALS_NAME = "popularity_category", "popularity_global", "als"
BASELINES: tuple[str, ...] = (POP_GLOBAL, POP_CATEGORY, ALS_NAME)
_GLOBAL = 0  # pseudo category holding every item for the global list


def seen_before(interactions: DataFrame, split: str) -> DataFrame:
    """(user_idx, item_idx) of every interaction before ``split`` (train; train + valid for test).

    These are excluded from rankings: they are known to the system when the period starts and a
    user-item pair occurs once in silver.interactions, so they can never be held-out positives.
    """
    before = [C.TRAIN] if split == C.VALID else [C.TRAIN, C.VALID]
    return interactions.where(F.col(C.SPLIT).isin(before)).select(C.USER, C.ITEM).distinct()


def train_positives(interactions: DataFrame) -> DataFrame:
    """(user_idx, item_idx) of train positives."""
    return (interactions.where((F.col(C.SPLIT) == C.TRAIN) & (F.col(C.LABEL) == 1))
            .select(C.USER, C.ITEM).distinct())


def popularity_items(item_features: DataFrame) -> DataFrame:
    """item_idx, category_idx, vector = [train_count] for every indexed item (cold: [0])."""
    require_columns(item_features, (C.ITEM, C.CATEGORY, "train_count"), "popularity_items")
    return item_features.select(C.ITEM, C.CATEGORY,
                                F.array(F.col("train_count").cast("float")).alias(VECTOR))


def popularity_category(pairs: DataFrame, item_features: DataFrame, seen: DataFrame, k: int,
                        block_size: int) -> DataFrame:
    """Rankings of ``popularity_category`` for the (user_idx, category_idx) ``pairs``."""
    return rank_by_vectors(constant_user_vectors(pairs), popularity_items(item_features), seen, k,
                           POP_CATEGORY, block_size)


def popularity_global(pairs: DataFrame, item_features: DataFrame, seen: DataFrame, k: int,
                      block_size: int) -> DataFrame:
    """Rankings of ``popularity_global``: one list per user, repeated for each of its pairs."""
    users = pairs.select(C.USER).distinct().withColumn(C.CATEGORY, F.lit(_GLOBAL))
    items = popularity_items(item_features).withColumn(C.CATEGORY, F.lit(_GLOBAL))
    lists = rank_by_vectors(constant_user_vectors(users), items, seen, k, POP_GLOBAL, block_size)
    return (lists.drop(C.CATEGORY).join(pairs.select(C.USER, C.CATEGORY).distinct(), C.USER)
            .select(C.SYSTEM, C.USER, C.CATEGORY, C.RANK, C.ITEM, C.SCORE))


@dataclass(frozen=True)
class AlsParams:
    rank: int
    reg_param: float
    alpha: float


@dataclass(frozen=True)
class AlsFactors:
    """Fitted factors: users (user_idx, vector), items (item_idx, vector)."""

    params: AlsParams
    users: DataFrame
    items: DataFrame


def fit_als(positives: DataFrame, params: AlsParams, max_iter: int, seed: int) -> AlsFactors:
    """Implicit-feedback ALS on (user_idx, item_idx) positives (confidence 1 + alpha * 1)."""
    # One factor block per core: ALS's default of 10 blocks only adds scheduling on small inputs.
    blocks = max(2, positives.sparkSession.sparkContext.defaultParallelism)
    als = ALS(rank=params.rank, regParam=params.reg_param, alpha=params.alpha, implicitPrefs=True,
              maxIter=max_iter, seed=seed, userCol=C.USER, itemCol=C.ITEM, ratingCol="_r",
              nonnegative=False, coldStartStrategy="drop", numUserBlocks=blocks, numItemBlocks=blocks)
    model = als.fit(positives.select(C.USER, C.ITEM, F.lit(1.0).cast("float").alias("_r")))
    users = model.userFactors.select(F.col("id").cast("int").alias(C.USER), F.col("features").alias(VECTOR))
    items = model.itemFactors.select(F.col("id").cast("int").alias(C.ITEM), F.col("features").alias(VECTOR))
    return AlsFactors(params, users, items)


def als_rankings(factors: AlsFactors, pairs: DataFrame, item_features: DataFrame, seen: DataFrame,
                 k: int, block_size: int, system: str = ALS_NAME) -> DataFrame:
    """Rank every factorised item of the category for each pair by the factors' dot product.

    Users without factors (no train positive) get no list; items without factors (cold items)
    cannot be ranked by ALS and never appear.
    """
    users = pairs.select(C.USER, C.CATEGORY).distinct().join(factors.users, C.USER)
    items = factors.items.join(item_features.select(C.ITEM, C.CATEGORY), C.ITEM)
    return rank_by_vectors(users, items, seen, k, system, block_size)


def als_grid(cfg: EvalConfig) -> list[AlsParams]:
    return [AlsParams(r, reg, a) for r, reg, a in
            itertools.product(cfg.als_ranks, cfg.als_reg_params, cfg.als_alphas)]


def tune_als(interactions: DataFrame, item_features: DataFrame, cfg: EvalConfig,
             block_size: int) -> tuple[AlsFactors, list[tuple[AlsParams, float, int]]]:
    """Fit the ALS grid on train, pick the best NDCG@``cfg.tune_k`` on valid (all groups).

    Returns the chosen factors and (params, valid NDCG, valid groups) of every grid point.
    Job-level: runs one ALS fit and one evaluation per grid point.
    """
    positives = train_positives(interactions).persist()
    groups = relevant_groups(interactions, C.VALID).where(F.col(C.SLICE) == C.ALL)
    pairs = groups.select(C.USER, C.CATEGORY)
    seen = seen_before(interactions, C.VALID)
    results: list[tuple[AlsParams, float, int]] = []
    best: AlsFactors | None = None
    best_score = float("-inf")
    try:
        for params in als_grid(cfg):
            factors = fit_als(positives, params, cfg.als_max_iter, cfg.seed)
            lists = ranked_lists(als_rankings(factors, pairs, item_features, seen, cfg.tune_k, block_size))
            row = (group_metrics(lists, groups, [cfg.tune_k]).where(F.col(C.METRIC) == C.NDCG)
                   .agg(F.avg(C.VALUE).alias("v"), F.count("*").alias("n")).first())
            score = float(row["v"]) if row and row["v"] is not None else 0.0
            log.info("ALS %s: valid NDCG@%d = %.5f over %d groups", params, cfg.tune_k, score, row["n"])
            results.append((params, score, int(row["n"])))
            if score > best_score:
                best, best_score = factors, score
    finally:
        positives.unpersist()
    if best is None:
        raise ValueError("eval.als_ranks / als_reg_params / als_alphas: the ALS grid is empty")
    return best, results
