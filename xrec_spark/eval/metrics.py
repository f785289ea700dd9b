"""Distributed ranking metrics: per-group values in Spark, the definitions of ``reference_metrics.py``.

Evaluation groups. A group is ``(user_idx, category_idx, slice)``: the user's held-out positives
of one category in one split, restricted to one slice. The features job gives every held-out
interaction one slice (cold_item > cold_user > warm > cross_category, first match wins), so one
(user, category) pair can form groups in two slices (e.g. a warm user who also bought a brand-new
item). Each pair also forms one group of slice ``all`` with all its positives. Every system is
scored on the same ranked list per (user, category) against each of these groups.

A system with no list for a group (e.g. ALS has no factors for a cold user) scores 0 there:
groups are never dropped per system, so every system is averaged over the same groups.

All functions here are transforms (DataFrame in, DataFrame out, no actions).
"""

from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from xrec_spark.checks import check_columns
from xrec_spark.eval import columns as C
from xrec_spark.ranking.spark import RANKED_COLUMNS

RANKINGS_COLUMNS = (C.SYSTEM, C.USER, C.CATEGORY, C.RANK, C.ITEM)


def system_rankings(ranked: DataFrame, system: str) -> DataFrame:
    """``ranked`` (user_idx, category_idx, rank, item_idx, score: the output of
    :func:`xrec_spark.ranking.spark.rank_by_vectors`) as the rankings of ``system``:
    system, user_idx, category_idx, rank, item_idx, score."""
    return ranked.select(F.lit(system).alias(C.SYSTEM), *RANKED_COLUMNS)


def relevant_groups(interactions: DataFrame, split: str, with_all: bool = True) -> DataFrame:
    """Held-out positives of ``split`` grouped into evaluation groups.

    In: silver.interactions (user_idx, item_idx, category_idx, label, split, slice).
    Out: user_idx, category_idx, slice, relevant array<int> (distinct, sorted), n_relevant int.
    With ``with_all`` each (user, category) also gets one group of slice ``all``.
    """
    check_columns(interactions, "relevant_groups", (C.USER, C.ITEM, C.CATEGORY, C.LABEL, C.SPLIT, C.SLICE))
    if split not in (C.VALID, C.TEST):
        raise ValueError(f"eval split must be {C.VALID!r} or {C.TEST!r}; got {split!r}")
    positives = interactions.where((F.col(C.SPLIT) == split) & (F.col(C.LABEL) == 1))
    per_slice = positives.withColumn(C.SLICE, F.coalesce(F.col(C.SLICE), F.lit("unknown")))
    keys = [C.USER, C.CATEGORY, C.SLICE]
    parts = per_slice.select(*keys, C.ITEM)
    if with_all:
        parts = parts.unionByName(positives.select(C.USER, C.CATEGORY, F.lit(C.ALL).alias(C.SLICE), C.ITEM))
    return (parts.groupBy(*keys)
            .agg(F.array_sort(F.collect_set(F.col(C.ITEM).cast("int"))).alias(C.RELEVANT))
            .withColumn(C.N_RELEVANT, F.size(C.RELEVANT)))


def ranked_lists(rankings: DataFrame) -> DataFrame:
    """One ranked list per (system, user, category), items ordered by ``rank`` ascending.

    In: system, user_idx, category_idx, rank, item_idx (gold.candidates-like; other columns ignored).
    Out: system, user_idx, category_idx, ranked array<int>.
    """
    check_columns(rankings, "ranked_lists", RANKINGS_COLUMNS)
    pairs = F.array_sort(F.collect_list(F.struct(F.col(C.RANK).alias("r"), F.col(C.ITEM).cast("int").alias("i"))))
    return (rankings.groupBy(C.SYSTEM, C.USER, C.CATEGORY)
            .agg(pairs.alias("_pairs"))
            .select(C.SYSTEM, C.USER, C.CATEGORY, F.transform("_pairs", lambda p: p["i"]).alias(C.RANKED)))


def _log2_discount(p: Column) -> Column:
    return F.lit(1.0) / F.log2(p.cast("double") + F.lit(1.0))


def _metric_values(hits: Column, n_rel: Column, k: int) -> list[tuple[str, Column]]:
    """(metric name, value) for one cut-off; ``hits`` = array of 1-based hit positions,
    ``n_rel`` >= 1 (int) the number of relevant items."""
    hk = F.filter(hits, lambda p: p <= F.lit(k))
    found = F.size(hk)
    dcg = F.aggregate(hk, F.lit(0.0), lambda acc, p: acc + _log2_discount(p))
    ideal = F.aggregate(F.sequence(F.lit(1), F.least(n_rel, F.lit(k))), F.lit(0.0),
                        lambda acc, p: acc + _log2_discount(p))
    return [
        (C.RECALL, found / n_rel.cast("double")),
        (C.NDCG, dcg / ideal),
        (C.HIT_RATE, F.when(found > 0, F.lit(1.0)).otherwise(F.lit(0.0))),
        (C.MRR, F.when(found > 0, F.lit(1.0) / F.array_min(hk)).otherwise(F.lit(0.0))),
    ]


def group_metrics(lists: DataFrame, groups: DataFrame, ks: Sequence[int]) -> DataFrame:
    """Per-group metric values for every system, in long format.

    In: ``lists`` from :func:`ranked_lists`, ``groups`` from :func:`relevant_groups`.
    Out: system, user_idx, category_idx, slice, n_relevant, metric, k, value (double).
    Every system is evaluated on every group (a missing list is an empty list: all misses).
    """
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"eval.ks must be a non-empty list of cut-offs >= 1; got {list(ks)}")
    systems = lists.select(C.SYSTEM).distinct()
    scored = (groups.crossJoin(systems)
              .join(lists, [C.SYSTEM, C.USER, C.CATEGORY], "left")
              .withColumn(C.RANKED, F.coalesce(F.col(C.RANKED), F.array().cast("array<int>"))))
    ranked, relevant = F.col(C.RANKED), F.col(C.RELEVANT)
    # 1-based positions of hits; an id counts only at its first position; 0 is padding.
    hits = F.filter(
        F.transform(ranked, lambda x, i: F.when(
            (x != 0) & F.array_contains(relevant, x) & (F.array_position(ranked, x) == i + 1), i + 1
        ).otherwise(F.lit(0))),
        lambda p: p > 0,
    )
    n_rel = F.col(C.N_RELEVANT).cast("int")
    entries = [F.struct(F.lit(name).alias(C.METRIC), F.lit(int(k)).alias(C.K), value.cast("double").alias(C.VALUE))
               for k in ks for name, value in _metric_values(F.col("_hits"), n_rel, int(k))]
    return (scored.withColumn("_hits", hits)
            .select(C.SYSTEM, C.USER, C.CATEGORY, C.SLICE, C.N_RELEVANT, F.explode(F.array(*entries)).alias("_m"))
            .select(C.SYSTEM, C.USER, C.CATEGORY, C.SLICE, C.N_RELEVANT,
                    F.col("_m")[C.METRIC].alias(C.METRIC), F.col("_m")[C.K].alias(C.K),
                    F.col("_m")[C.VALUE].alias(C.VALUE)))


def coverage_and_popularity(rankings: DataFrame, pairs: DataFrame, catalogue: DataFrame,
                            ks: Sequence[int]) -> DataFrame:
    """Item coverage and popularity bias of each system's top-k lists, per category and overall.

    In: ``rankings`` (system, user_idx, category_idx, rank, item_idx); ``pairs`` the evaluated
    (user_idx, category_idx); ``catalogue`` silver.item_features (item_idx, category_idx,
    train_count). Only lists of evaluated pairs count, so systems are compared on the same users.
    Out: system, category_idx (null = all categories), metric, k, value, groups, where metric is
    ``item_coverage`` (distinct recommended items / catalogue items) or ``mean_log_popularity``
    (mean log(1 + train_count) over recommendation slots) and groups the number of lists; plus
    rows of system ``catalogue`` with ``catalogue_mean_log_popularity`` (the unbiased reference;
    groups = catalogue items). One aggregation per level, every k as conditional aggregates.
    """
    check_columns(rankings, "coverage_and_popularity rankings", RANKINGS_COLUMNS)
    check_columns(catalogue, "coverage_and_popularity catalogue", (C.ITEM, C.CATEGORY, "train_count"))
    items = catalogue.select(C.ITEM, F.col(C.CATEGORY).alias("_item_category"),
                             F.log1p(F.col("train_count").cast("double")).alias("_logpop"))
    recs = (rankings.join(pairs.select(C.USER, C.CATEGORY).distinct(), [C.USER, C.CATEGORY], "left_semi")
            .join(items, C.ITEM, "left")
            .withColumn("_logpop", F.coalesce(F.col("_logpop"), F.lit(0.0))))
    null_category = F.lit(None).cast("int").alias(C.CATEGORY)
    sizes = (items.groupBy(F.col("_item_category").alias(C.CATEGORY))
             .agg(F.count("*").alias("_n_items"), F.avg("_logpop").alias("_ref"))
             .unionByName(items.agg(F.count("*").alias("_n_items"), F.avg("_logpop").alias("_ref"))
                          .select(null_category, "_n_items", "_ref")))

    def per_k(k: int) -> list[Column]:
        inside = F.col(C.RANK) <= F.lit(int(k))
        return [F.countDistinct(F.when(inside, F.col(C.ITEM))).alias(f"_items_{k}"),
                F.avg(F.when(inside, F.col("_logpop"))).alias(f"_pop_{k}")]

    aggs = [F.countDistinct(C.USER, C.CATEGORY).alias(C.GROUPS)] + [c for k in ks for c in per_k(k)]
    levels = (recs.groupBy(C.SYSTEM, C.CATEGORY).agg(*aggs)
              .unionByName(recs.groupBy(C.SYSTEM).agg(*aggs).withColumn(C.CATEGORY, null_category)))
    joined = levels.join(sizes, levels[C.CATEGORY].eqNullSafe(sizes[C.CATEGORY])).drop(sizes[C.CATEGORY])
    entries = [F.struct(F.lit(name).alias(C.METRIC), F.lit(int(k)).alias(C.K), value.cast("double").alias(C.VALUE))
               for k in ks for name, value in ((C.COVERAGE, F.col(f"_items_{k}") / F.col("_n_items")),
                                               (C.POPULARITY_BIAS, F.col(f"_pop_{k}")))]
    systems = (joined.select(C.SYSTEM, C.CATEGORY, C.GROUPS, F.explode(F.array(*entries)).alias("_m"))
               .select(C.SYSTEM, C.CATEGORY, F.col("_m")[C.METRIC].alias(C.METRIC), F.col("_m")[C.K].alias(C.K),
                       F.col("_m")[C.VALUE].alias(C.VALUE), F.col(C.GROUPS).cast("long").alias(C.GROUPS)))
    reference = sizes.select(F.lit("catalogue").alias(C.SYSTEM), C.CATEGORY,
                             F.lit(C.CATALOGUE_POPULARITY).alias(C.METRIC), F.lit(None).cast("int").alias(C.K),
                             F.col("_ref").alias(C.VALUE), F.col("_n_items").cast("long").alias(C.GROUPS))
    return systems.unionByName(reference)
