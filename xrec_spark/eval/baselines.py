"""Baselines on the same split, ranked by the same code as the model (:mod:`xrec_spark.ranking`).

- ``popularity_category``: items of the category by train positives (most popular first; items
  without train positives last), the very lists the candidates job serves as its fallback
  (:mod:`xrec_spark.ranking.popularity`).
- ``popularity_global``: one list over all items by train positives, ignoring the category;
  it shows what ignoring the category costs (items of other categories are never relevant).
- ``als``: Spark ML ALS with ``implicitPrefs=True`` on the train positives, tuned by a staged
  search on the **valid** split (NDCG@k of all valid groups), never on test: stage 1 fits
  ``eval.als_reg_params`` x ``eval.als_alphas`` at ``eval.als_base_rank``, stage 2 fits
  ``eval.als_ranks`` at the best (reg, alpha) (a coordinate search: the full product grid of
  rank x reg x alpha at maxIter >= 15 is hours on 2 cores); items of the category ranked by the
  dot product of the factors (full ranking within the category).
- ``ease``: EASE (Steck 2019) over the ``eval.ease_items`` most popular train items of all
  categories, λ chosen on valid from ``eval.ease_lambdas`` (:mod:`xrec_spark.eval.ease`).
- ``dae``: Mult-DAE (Liang et al. 2018, :mod:`xrec_spark.model.autoencoder`) over the
  ``eval.dae_items`` most popular train items of all categories, the hidden size and the epoch
  chosen on valid; it ranks a category's items by their decoded logits, like EASE by x·B.

All baselines are fitted on train positives only, like the model.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xrec_spark.config import Baseline, EvalConfig
from xrec_spark.eval import columns as C
from xrec_spark.eval import ease as E
from xrec_spark.eval.metrics import group_metrics, ranked_lists, relevant_groups, system_rankings
from xrec_spark.model.autoencoder import AutoencoderSettings, MultDAE, fit_autoencoder
from xrec_spark.ranking.popularity import constant_user_vectors, popularity_vectors, rank_by_popularity
from xrec_spark.ranking.spark import rank_by_vectors

log = logging.getLogger(__name__)

POP_CATEGORY, POP_GLOBAL = Baseline.POPULARITY_CATEGORY.value, Baseline.POPULARITY_GLOBAL.value
ALS_NAME, EASE_NAME, DAE_NAME = Baseline.ALS.value, E.EASE_NAME, Baseline.DAE.value
BASELINES: tuple[str, ...] = (POP_GLOBAL, POP_CATEGORY, ALS_NAME, EASE_NAME, DAE_NAME)
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


def popularity_category(pairs: DataFrame, item_features: DataFrame, seen: DataFrame, k: int,
                        block_size: int) -> DataFrame:
    """Rankings of ``popularity_category`` for the (user_idx, category_idx) ``pairs``."""
    return system_rankings(rank_by_popularity(pairs, item_features, k, seen, block_size), POP_CATEGORY)


def popularity_global(pairs: DataFrame, item_features: DataFrame, seen: DataFrame, k: int,
                      block_size: int) -> DataFrame:
    """Rankings of ``popularity_global``: one list per user, repeated for each of its pairs."""
    users = constant_user_vectors(pairs.select(C.USER).distinct().withColumn(C.CATEGORY, F.lit(_GLOBAL)))
    items = popularity_vectors(item_features).withColumn(C.CATEGORY, F.lit(_GLOBAL))
    lists = system_rankings(rank_by_vectors(users, items, k, seen, block_size=block_size), POP_GLOBAL)
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
    sc = positives.sparkSession.sparkContext
    blocks = max(2, sc.defaultParallelism)
    if sc.getCheckpointDir() is None and sc.master.startswith("local"):
        # Without a checkpoint dir ALS never cuts its lineage: from ~15 iterations on, the
        # driver fails with StackOverflowError. (On a cluster set spark.checkpoint.dir.)
        sc.setCheckpointDir(tempfile.mkdtemp(prefix="xrec-als-checkpoints-"))
    als = ALS(rank=params.rank, regParam=params.reg_param, alpha=params.alpha, implicitPrefs=True,
              maxIter=max_iter, seed=seed, userCol=C.USER, itemCol=C.ITEM, ratingCol="_r",
              nonnegative=False, coldStartStrategy="drop", numUserBlocks=blocks, numItemBlocks=blocks)
    model = als.fit(positives.select(C.USER, C.ITEM, F.lit(1.0).cast("float").alias("_r")))
    users = model.userFactors.select(F.col("id").cast("int").alias(C.USER), F.col("features").alias(C.VECTOR))
    items = model.itemFactors.select(F.col("id").cast("int").alias(C.ITEM), F.col("features").alias(C.VECTOR))
    return AlsFactors(params, users, items)


def als_rankings(factors: AlsFactors, pairs: DataFrame, item_features: DataFrame, seen: DataFrame,
                 k: int, block_size: int, system: str = ALS_NAME) -> DataFrame:
    """Rank every factorised item of the category for each pair by the factors' dot product.

    Users without factors (no train positive) get no list; items without factors (cold items)
    cannot be ranked by ALS and never appear.
    """
    users = pairs.select(C.USER, C.CATEGORY).distinct().join(factors.users, C.USER)
    items = factors.items.join(item_features.select(C.ITEM, C.CATEGORY), C.ITEM)
    return system_rankings(rank_by_vectors(users, items, k, seen, block_size=block_size), system)


def valid_ndcg(rankings: DataFrame, groups: DataFrame, k: int) -> tuple[float, int]:
    """(mean NDCG@k, group count) of ``rankings`` over the valid ``groups`` (slice ``all``)."""
    row = (group_metrics(ranked_lists(rankings), groups, [k]).where(F.col(C.METRIC) == C.NDCG)
           .agg(F.avg(C.VALUE).alias("v"), F.count("*").alias("n")).first())
    return (float(row["v"]) if row and row["v"] is not None else 0.0), int(row["n"] if row else 0)


def _valid_setup(interactions: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """(valid groups of slice ``all``, their (user, category) pairs, items seen before valid)."""
    groups = relevant_groups(interactions, C.VALID).where(F.col(C.SLICE) == C.ALL)
    return groups, groups.select(C.USER, C.CATEGORY), seen_before(interactions, C.VALID)


def _driver_valid_setup(interactions: DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, set[int]]]:
    """:func:`_valid_setup` collected to the driver for the baselines tuned there (EASE, dae):
    (valid groups with their relevant items, their (user, category) pairs, seen items by user).
    Scored with the numpy reference NDCG (the Spark metrics are tested equal to it): no Spark job
    per point tried."""
    groups, pairs, seen = _valid_setup(interactions)
    local_groups = groups.select(C.USER, C.CATEGORY, C.RELEVANT).toPandas()
    return local_groups, local_groups[[C.USER, C.CATEGORY]].drop_duplicates(), E.seen_by_user(seen, pairs)


def als_stages(cfg: EvalConfig, best: AlsParams | None = None) -> list[AlsParams]:
    """Stage 1 (``best`` None): reg x alpha at ``als_base_rank``; stage 2: every rank at ``best``'s
    reg and alpha."""
    if best is None:
        return [AlsParams(cfg.als_base_rank, reg, a) for reg in cfg.als_reg_params for a in cfg.als_alphas]
    return [AlsParams(r, best.reg_param, best.alpha) for r in cfg.als_ranks]


def tune_als(interactions: DataFrame, item_features: DataFrame, cfg: EvalConfig,
             block_size: int) -> tuple[AlsFactors, list[tuple[AlsParams, float, int]]]:
    """Staged ALS search on train, each point scored by NDCG@``cfg.tune_k`` on valid (all groups).

    Returns the factors of the best point and (params, valid NDCG, valid groups) of every point
    tried, in the order tried (a point repeated by stage 2 is not refitted).
    Job-level: one ALS fit and one evaluation per point.
    """
    positives = train_positives(interactions).persist()
    groups, pairs, seen = _valid_setup(interactions)
    single = len(als_stages(cfg)) == 1 and set(cfg.als_ranks) <= {cfg.als_base_rank}
    results: list[tuple[AlsParams, float, int]] = []
    best: AlsFactors | None = None
    best_score = float("-inf")
    clock = E.Stopwatch()
    try:
        for stage in (1, 2):
            tried = {p for p, _, _ in results}
            for params in als_stages(cfg, best.params if stage == 2 and best else None):
                if params in tried:
                    continue
                factors = fit_als(positives, params, cfg.als_max_iter, cfg.seed)
                if single:   # nothing to choose: no valid pass (its score is NaN in the grid)
                    log.info("ALS: one point %s, fitted without a valid pass", params)
                    return factors, [(params, float("nan"), 0)]
                lists = als_rankings(factors, pairs, item_features, seen, cfg.tune_k, block_size)
                score, n = valid_ndcg(lists, groups, cfg.tune_k)
                log.info("ALS stage %d %s: valid NDCG@%d = %.5f over %d groups (%.0f s so far)",
                         stage, params, cfg.tune_k, score, n, clock())
                results.append((params, score, n))
                if score > best_score:
                    best, best_score = factors, score
    finally:
        positives.unpersist()
    if best is None:
        raise ValueError("eval.als_reg_params / als_alphas: the ALS search is empty")
    log.info("ALS search: %d points in %.0f s, chosen %s (valid NDCG@%d %.5f)",
             len(results), clock(), best.params, cfg.tune_k, best_score)
    return best, results


@dataclass(frozen=True)
class EaseFit:
    """The chosen EASE model: its data, weights B, λ, and every λ tried (λ, valid NDCG, groups)."""

    data: E.EaseData
    weights: object   # numpy float32 [N, N]
    lam: float
    grid: list[tuple[float, float, int]]
    seconds: float
    peak_rss_gib: float


def tune_ease(interactions: DataFrame, item_features: DataFrame, cfg: EvalConfig) -> EaseFit:
    """Fit EASE on train positives for every ``cfg.ease_lambdas``; keep the best valid NDCG@tune_k."""
    clock = E.Stopwatch()
    data = E.collect_ease_data(train_positives(interactions), item_features, cfg.ease_items)
    log.info("EASE: %d items, %d users with positives among them, Gram matrix in %.1f s",
             len(data.items), len(data.user_rows), clock())
    if len(cfg.ease_lambdas) == 1:   # nothing to choose: no valid pass (its score is NaN in the grid)
        lam = float(cfg.ease_lambdas[0])
        fit = EaseFit(data, E.ease_weights(data.gram, lam), lam, [(lam, float("nan"), 0)], clock(), E.peak_rss_gib())
        log.info("EASE: one lambda=%g, fitted without a valid pass in %.0f s", lam, fit.seconds)
        return fit
    local_groups, local_pairs, seen_users = _driver_valid_setup(interactions)
    grid: list[tuple[float, float, int]] = []
    best, best_lam, best_score = None, None, float("-inf")
    for lam in cfg.ease_lambdas:
        weights = E.ease_weights(data.gram, lam)
        lists = E.rank_pairs(data, E.weights_scorer(weights), local_pairs, seen_users, cfg.tune_k)
        score, n = E.mean_ndcg(lists, local_groups, cfg.tune_k)
        log.info("EASE lambda=%g: valid NDCG@%d = %.5f over %d groups (%.0f s so far, peak RSS %.1f GiB)",
                 lam, cfg.tune_k, score, n, clock(), E.peak_rss_gib())
        grid.append((float(lam), score, n))
        if score > best_score:
            best, best_lam, best_score = weights, float(lam), score
        del weights
    if best is None:
        raise ValueError("eval.ease_lambdas is empty")
    fit = EaseFit(data, best, best_lam, grid, clock(), E.peak_rss_gib())
    log.info("EASE: chose lambda=%g (valid NDCG@%d %.5f); %d lambdas in %.0f s, peak RSS %.1f GiB",
             best_lam, cfg.tune_k, best_score, len(grid), fit.seconds, fit.peak_rss_gib)
    return fit


def ease_rankings(fit: EaseFit, pairs: DataFrame, seen: DataFrame, k: int) -> DataFrame:
    """Rankings of the chosen EASE model for ``pairs`` (see :func:`xrec_spark.eval.ease.rank_pairs`)."""
    return E.pair_rankings(pairs.sparkSession, fit.data, E.weights_scorer(fit.weights), pairs, seen, k)


@dataclass(frozen=True)
class DaeFit:
    """The chosen Mult-DAE: its data, model, settings and epoch, and every point scored on valid
    as (hidden, epoch, valid NDCG, groups)."""

    data: E.EaseData
    model: MultDAE
    settings: AutoencoderSettings
    epoch: int
    grid: list[tuple[int, int, float, int]]
    seconds: float


def dae_scorer(model: MultDAE) -> E.Scorer:
    """The autoencoder's logits for the columns asked (a block of users' rows at a time)."""
    def score(x: np.ndarray, cols: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.scores(torch.from_numpy(x), torch.from_numpy(cols)).numpy()
    return score


def tune_dae(interactions: DataFrame, item_features: DataFrame, cfg: EvalConfig) -> DaeFit:
    """Fit Mult-DAE on train positives for each ``cfg.dae_hidden``, scoring valid NDCG@tune_k
    every ``cfg.dae_eval_every`` epochs; keep the best (hidden, epoch)."""
    clock = E.Stopwatch()
    data = E.collect_ease_data(train_positives(interactions), item_features, cfg.dae_items, with_gram=False)
    local_groups, local_pairs, seen_users = _driver_valid_setup(interactions)
    rows = list(data.user_rows.values())
    grid: list[tuple[int, int, float, int]] = []
    best: tuple[float, MultDAE, AutoencoderSettings, int] | None = None
    for hidden in cfg.dae_hidden:
        settings = AutoencoderSettings(hidden=hidden, dropout=cfg.dae_dropout, epochs=cfg.dae_epochs, seed=cfg.seed)

        def valid_score(epoch: int, model: MultDAE, hidden: int = hidden) -> float:
            lists = E.rank_pairs(data, dae_scorer(model), local_pairs, seen_users, cfg.tune_k)
            score, n = E.mean_ndcg(lists, local_groups, cfg.tune_k)
            grid.append((hidden, epoch, score, n))
            log.info("DAE hidden=%d epoch %d: valid NDCG@%d = %.5f over %d groups (%.0f s so far)",
                     hidden, epoch, cfg.tune_k, score, n, clock())
            return score

        model, _ = fit_autoencoder(rows, len(data.items), settings, valid_score, every=cfg.dae_eval_every)
        score, epoch = max((s, -e) for h, e, s, _ in grid if h == hidden)
        if best is None or score > best[0]:
            best = (score, model, settings, -epoch)
    assert best is not None   # dae_hidden is validated non-empty
    score, model, settings, epoch = best
    fit = DaeFit(data, model, settings, epoch, grid, clock())
    log.info("DAE: chose hidden=%d at epoch %d (valid NDCG@%d %.5f); %d points in %.0f s",
             settings.hidden, epoch, cfg.tune_k, score, len(grid), fit.seconds)
    return fit


def dae_rankings(fit: DaeFit, pairs: DataFrame, seen: DataFrame, k: int) -> DataFrame:
    """Rankings of the chosen Mult-DAE for ``pairs`` (see :func:`xrec_spark.eval.ease.rank_pairs`)."""
    return E.pair_rankings(pairs.sparkSession, fit.data, dae_scorer(fit.model), pairs, seen, k, DAE_NAME)
