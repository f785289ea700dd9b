"""Negative sampling for ``silver.training_examples``, with Spark joins only.

Each train positive (user u, item i, category k) gets ``per_positive`` negative **slots**; slot
j uses strategy ``strategies[j % len(strategies)]`` (so ``[uniform, popularity]`` with 4 slots
gives 2 + 2). Strategies draw from **pools** of train items (items with at least one train
positive; items never seen in train are not used as negatives, that would leak future ids):

- ``uniform``: an item of category k (items by primary category), uniformly;
- ``popularity``: an item of category k with probability proportional to train_count^alpha;
- ``cross_category``: a hard negative: one of the ``hard_pool_size`` most popular items
  (weighted by train_count^alpha) of a category c != k drawn uniformly from the categories u is
  active in (train), labelled with c's ``category_idx``. A user active only in k gets a popular
  item of k instead, so every positive gets the same number of slots.

A negative is **never one of the user's train positives** (the positive itself included); a
draw that hits one is redrawn (``attempts`` draws per slot, the first valid wins), and a slot
whose draws all hit stays empty. Valid/test positives are not excluded: the future is not
known at training time. Slots are sampled with replacement: two slots may draw the same item.

Determinism: every draw is a hash of (seed, user, positive item, slot, attempt), independent of
partitioning. Weighted draws use an inverse-CDF table: each pool item owns the interval
[lo, hi) of its category's normalised cumulative weight, and the interval is split over
``n`` equal buckets (n = the pool's item count), so a draw x joins on bucket floor(x * n) and
keeps the one item with lo <= x < hi; every bucket holds about two items.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from xrec_spark.config import NegativesConfig, NegativeStrategy
from xrec_spark.features.common import uniform01


def _pool_items(item_features: DataFrame, strategy: NegativeStrategy, alpha: float,
                hard_pool_size: int) -> DataFrame:
    """``strategy, category_idx, item_idx, w`` for one strategy's pool."""
    train_items = item_features.where(F.col("train_count") > 0)
    if strategy is NegativeStrategy.UNIFORM:
        weighted = train_items.withColumn("w", F.lit(1.0))
    else:
        if strategy is NegativeStrategy.CROSS_CATEGORY:
            rank = F.row_number().over(Window.partitionBy("category_idx")
                                       .orderBy(F.desc("train_count"), "item_idx"))
            train_items = train_items.withColumn("rank", rank).where(F.col("rank") <= hard_pool_size)
        weighted = train_items.withColumn("w", F.pow(F.col("train_count").cast("double"), F.lit(alpha)))
    return weighted.select(F.lit(strategy.value).alias("strategy"), "category_idx", "item_idx", "w")


def sampling_pools(item_features: DataFrame, cfg: NegativesConfig) -> DataFrame:
    """Inverse-CDF bucket table of every configured strategy's pools.

    Args:
        item_features: ``item_idx, category_idx, train_count`` (silver.item_features).
        cfg: the negatives config (strategies, popularity_alpha, hard_pool_size).

    Returns:
        ``strategy, category_idx, n_buckets, bucket, item_idx, lo, hi``; an item appears once per
        bucket its interval touches.
    """
    strategies = list(dict.fromkeys(cfg.strategies))
    if not strategies:
        raise ValueError("features.negatives.strategies is empty; give at least one of "
                         f"{[s.value for s in NegativeStrategy]} or set per_positive: 0")
    items = reduce(DataFrame.unionByName,
                   [_pool_items(item_features, s, cfg.popularity_alpha, cfg.hard_pool_size) for s in strategies])
    pool = Window.partitionBy("strategy", "category_idx")
    running = pool.orderBy("item_idx").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    cdf = items.select("strategy", "category_idx", "item_idx",
                       ((F.sum("w").over(running) - F.col("w")) / F.sum("w").over(pool)).alias("lo"),
                       (F.sum("w").over(running) / F.sum("w").over(pool)).alias("hi"),
                       F.count(F.lit(1)).over(pool).alias("n_buckets"))
    first = F.floor(F.col("lo") * F.col("n_buckets")).cast("int")
    last = F.least(F.ceil(F.col("hi") * F.col("n_buckets")).cast("int") - 1, F.col("n_buckets").cast("int") - 1)
    return (cdf.where(F.col("hi") > F.col("lo"))  # zero-weight items can never be drawn
            .select("strategy", "category_idx", "n_buckets", "item_idx", "lo", "hi",
                    F.explode(F.sequence(first, F.greatest(first, last))).alias("bucket")))


def active_categories(affinity: DataFrame) -> DataFrame:
    """``user_idx, categories`` (sorted array<int>) from silver.user_category_affinity."""
    return affinity.groupBy("user_idx").agg(F.sort_array(F.collect_list("category_idx")).alias("categories"))


def _slots(cfg: NegativesConfig) -> Column:
    strategies = list(cfg.strategies)
    return F.array(*[F.struct(F.lit(j).alias("slot"), F.lit(strategies[j % len(strategies)].value).alias("strategy"))
                     for j in range(cfg.per_positive)])


def _with_pool_category(rows: DataFrame, active: DataFrame | None, seed: int) -> DataFrame:
    """Add ``pool_category``: the positive's category, or for a hard-negative slot one of the
    user's other active categories (uniformly; the positive's own when there is none)."""
    if active is None:
        return rows.withColumn("pool_category", F.col("pos_category_idx"))
    others = F.array_remove(F.col("categories"), F.col("pos_category_idx"))
    pick = F.floor(uniform01(seed, "category", "user_idx", "pos_item_idx", "slot", "attempt")
                   * F.size(others)).cast("int")
    hard = F.when(F.size(others) > 0, F.element_at(others, pick + 1)).otherwise(F.col("pos_category_idx"))
    is_hard = F.col("strategy") == NegativeStrategy.CROSS_CATEGORY.value
    return (rows.join(active, "user_idx", "left")
            .withColumn("pool_category", F.when(is_hard, hard).otherwise(F.col("pos_category_idx")))
            .drop("categories"))


def _draw(candidates: DataFrame, pools: DataFrame, seed: int) -> DataFrame:
    """Add ``item_idx``: the pool item whose [lo, hi) holds the candidate's draw."""
    stats = pools.select("strategy", F.col("category_idx").alias("pool_category"), "n_buckets").distinct()
    x = uniform01(seed, "item", "user_idx", "pos_item_idx", "slot", "attempt")
    located = (candidates.join(F.broadcast(stats), ["strategy", "pool_category"])
               .withColumn("x", x)
               .withColumn("bucket", F.floor(F.col("x") * F.col("n_buckets")).cast("int")))
    table = pools.select("strategy", F.col("category_idx").alias("pool_category"), "bucket", "item_idx", "lo", "hi")
    # Broadcast: one or two rows per train item and strategy, a bounded dimension table.
    return (located.join(F.broadcast(table), ["strategy", "pool_category", "bucket"])
            .where((F.col("lo") <= F.col("x")) & (F.col("x") < F.col("hi")))
            .drop("x", "bucket", "lo", "hi", "n_buckets"))


_SLOT_COLUMNS = ("user_idx", "pos_item_idx", "pos_category_idx", "weight", "slot", "strategy")


def sample_negatives(positives: DataFrame, pools: DataFrame | None, affinity: DataFrame,
                     cfg: NegativesConfig, seed: int) -> DataFrame:
    """Negatives for every train positive (see the module docstring for the rules).

    Args:
        positives: train positives ``user_idx, item_idx, category_idx, weight``.
        pools: :func:`sampling_pools` of the same ``cfg`` (read several times: the caller
            may persist it); may be None when ``per_positive`` is 0.
        affinity: ``user_idx, category_idx`` (used by ``cross_category`` only).
        cfg: negatives config.
        seed: sampling seed.

    Returns:
        ``user_idx, pos_item_idx, slot, item_idx, category_idx, weight`` (weight: the
        positive's), at most ``per_positive`` rows per positive.
    """
    out = ("user_idx", "pos_item_idx", "slot", "item_idx", F.col("pool_category").alias("category_idx"), "weight")
    if cfg.per_positive == 0:
        return positives.select("user_idx", F.col("item_idx").alias("pos_item_idx"), F.lit(0).alias("slot"),
                                "item_idx", "category_idx", "weight").limit(0)
    if pools is None:
        raise ValueError("sample_negatives: pools is None but features.negatives.per_positive is "
                         f"{cfg.per_positive}; pass sampling_pools(item_features, cfg)")
    slots = (positives.select("user_idx", F.col("item_idx").alias("pos_item_idx"),
                              F.col("category_idx").alias("pos_category_idx"), "weight",
                              F.explode(_slots(cfg)).alias("s"))
             .select(*_SLOT_COLUMNS[:4], "s.slot", "s.strategy"))
    active = active_categories(affinity) if NegativeStrategy.CROSS_CATEGORY in cfg.strategies else None
    taken = positives.select("user_idx", "item_idx", F.lit(True).alias("hit"))

    # First draw of every slot; draws that hit a positive are flagged by one left join.
    first = _draw(_with_pool_category(slots.withColumn("attempt", F.lit(0)), active, seed), pools, seed)
    flagged = first.join(taken, ["user_idx", "item_idx"], "left")
    accepted = flagged.where(F.col("hit").isNull()).select(*out)
    if cfg.attempts == 1:
        return accepted
    # Redraws only for the few slots whose first draw hit; the first valid one wins.
    redo = (flagged.where(F.col("hit").isNotNull()).select(*_SLOT_COLUMNS)
            .withColumn("attempt", F.explode(F.sequence(F.lit(1), F.lit(cfg.attempts - 1)))))
    redrawn = (_draw(_with_pool_category(redo, active, seed), pools, seed)
               .join(taken, ["user_idx", "item_idx"], "left_anti"))
    best = (redrawn.groupBy("user_idx", "pos_item_idx", "slot")
            .agg(F.min_by(F.struct("item_idx", "pool_category", "weight"), "attempt").alias("b"))
            .select("user_idx", "pos_item_idx", "slot", "b.item_idx",
                    F.col("b.pool_category").alias("category_idx"), "b.weight"))
    return accepted.unionByName(best)


def training_examples(positives_with_history: DataFrame, negatives: DataFrame, files: int) -> DataFrame:
    """Positives (label 1) and their negatives (label 0), each with the positive's history.

    Rows are hash-partitioned on (user, positive item) into ``files`` partitions (one file
    each), so a positive and its negatives share a file. The narrow rows are shuffled once and
    joined with the histories shuffled the same way: each history array crosses the network once
    per positive, not once per example. Within a file rows are ordered by that key; readers
    shuffle (petastorm: shuffled row groups plus its shuffling queue).

    Args:
        positives_with_history: ``user_idx, item_idx, category_idx, weight, history``.
        negatives: output of :func:`sample_negatives`.
        files: number of output partitions (files of the table).

    Returns:
        silver.training_examples columns ``user_idx, item_idx, category_idx, label (float),
        weight (float), history``.
    """
    if files < 1:
        raise ValueError(f"features.training_files must be >= 1, got {files}")
    keys = ["user_idx", "pos_item_idx"]
    rows = (negatives.select(*keys, "item_idx", "category_idx", F.lit(0.0).alias("label"), "weight")
            .unionByName(positives_with_history.select(
                "user_idx", F.col("item_idx").alias("pos_item_idx"), "item_idx", "category_idx",
                F.lit(1.0).alias("label"), "weight")))
    history = positives_with_history.select("user_idx", F.col("item_idx").alias("pos_item_idx"), "history")
    # Sort-merge, never broadcast: the history side holds an array per positive, and size
    # estimates from compressed Parquet could let the planner broadcast it.
    joined = rows.repartition(files, *keys).join(history.repartition(files, *keys).hint("merge"), keys)
    return joined.select("user_idx", "item_idx", "category_idx", F.col("label").cast("float").alias("label"),
                         F.col("weight").cast("float").alias("weight"), "history")
