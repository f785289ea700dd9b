"""Cross-category matrices from train rows only (valid/test never leak into them).

A user is **active in a category** when they have at least one train interaction there, of
either label: a low rating still says the user shops in that category. (Positives only drive
history, popularity and training examples.)

``silver.user_category_affinity`` (one row per active user x category):
    ``n`` train interactions, ``weight`` sum of their recency weights, ``share`` = n / the
    user's train interactions over all categories, ``last_ts`` latest train interaction.

``silver.category_transfer`` (every ordered pair src != dst of categories with a train user;
the diagonal is left out: it is trivially P = 1 and would top every ranking of source
categories; a missing pair never occurs, a pair without shared users has users_both = 0):
    ``users_both`` users active in both; ``p_dst_given_src`` = users_both / users(src);
    ``lift`` = p_dst_given_src / P(dst), P(dst) = users(dst) / users with any train row;
    ``score`` = users_both / sqrt(users(src) * users(dst)), the cosine similarity of the two
    categories' user sets (symmetric, in [0, 1], not inflated by small categories the way
    lift is).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from xrec_spark.names import TRAIN


def user_category_affinity(interactions: DataFrame) -> DataFrame:
    """Per (user, category) engagement in train.

    Args:
        interactions: silver.interactions columns ``user_idx, category_idx, ts, weight, split``.

    Returns:
        ``user_idx, category_idx, n (long), weight (double), share (double), last_ts``.
    """
    grouped = (interactions.where(F.col("split") == TRAIN)
               .groupBy("user_idx", "category_idx")
               .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("weight").cast("double")).alias("weight"),
                    F.max("ts").alias("last_ts")))
    user_total = F.sum("n").over(Window.partitionBy("user_idx"))
    return grouped.select("user_idx", "category_idx", "n", "weight",
                          (F.col("n") / user_total).cast("double").alias("share"), "last_ts")


def category_transfer(affinity: DataFrame) -> DataFrame:
    """Every ordered category pair's co-engagement (see the module docstring).

    Args:
        affinity: ``user_idx, category_idx`` of active users (silver.user_category_affinity).

    Returns:
        ``src_category_idx, dst_category_idx, users_both (long), p_dst_given_src, lift, score``.
    """
    active = affinity.select("user_idx", "category_idx")
    per_cat = active.groupBy("category_idx").agg(F.count(F.lit(1)).alias("users"))
    total = active.agg(F.countDistinct("user_idx").alias("total_users"))
    # Self-join per user: cost is the sum over users of (active categories)^2, small because a
    # user is active in a handful of categories.
    both = (active.alias("a").join(active.alias("b"), "user_idx")
            .where(F.col("a.category_idx") != F.col("b.category_idx"))
            .groupBy(F.col("a.category_idx").alias("src_category_idx"),
                     F.col("b.category_idx").alias("dst_category_idx"))
            .agg(F.count(F.lit(1)).alias("users_both")))
    src = per_cat.select(F.col("category_idx").alias("src_category_idx"), F.col("users").alias("users_src"))
    dst = per_cat.select(F.col("category_idx").alias("dst_category_idx"), F.col("users").alias("users_dst"))
    pairs = (src.crossJoin(dst).where(F.col("src_category_idx") != F.col("dst_category_idx"))
             .join(both, ["src_category_idx", "dst_category_idx"], "left")
             .crossJoin(total)
             .withColumn("users_both", F.coalesce(F.col("users_both"), F.lit(0)).cast("long")))
    p = F.col("users_both") / F.col("users_src")
    p_dst = F.col("users_dst") / F.col("total_users")
    return pairs.select(
        "src_category_idx", "dst_category_idx", "users_both",
        p.cast("double").alias("p_dst_given_src"),
        (p / p_dst).cast("double").alias("lift"),
        (F.col("users_both") / F.sqrt(F.col("users_src") * F.col("users_dst"))).cast("double").alias("score"),
    )


def top_transfer_pairs(transfer: DataFrame, category_index: DataFrame, n: int) -> DataFrame:
    """The ``n`` pairs with the highest score (ties: more shared users, then lower ids), named.

    Returns:
        ``src_category, dst_category`` (natural ids) plus the transfer columns, best first.
    """
    names = category_index.select("category", "category_idx")
    src = names.select(F.col("category").alias("src_category"), F.col("category_idx").alias("src_category_idx"))
    dst = names.select(F.col("category").alias("dst_category"), F.col("category_idx").alias("dst_category_idx"))
    return (transfer.orderBy(F.desc("score"), F.desc("users_both"), "src_category_idx", "dst_category_idx")
            .limit(n).join(F.broadcast(src), "src_category_idx").join(F.broadcast(dst), "dst_category_idx")
            .orderBy(F.desc("score"), F.desc("users_both"), "src_category_idx", "dst_category_idx"))
