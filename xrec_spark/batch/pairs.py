"""Which (user, category) pairs get a user vector and candidates.

For every indexed user: the user's top ``user_top_categories`` categories by affinity, the
``transfer_categories`` categories the user never touched that the category-transfer matrix
ranks highest from the categories they did touch, and every **served category**:
``batch.categories_for_all_users`` (the transfer targets when empty), plus
(``batch.serve_new_categories``) every category nobody has train activity in yet, such as one
that appeared after the train cutoff. A category the user never touched is the cross-category
case: the user's vector for it comes from history in other categories, and a new category's
items from their content.
"""

from __future__ import annotations

from typing import Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from xrec_spark.config import JobConfig


def target_category_names(cfg: JobConfig) -> list[str]:
    """``batch.categories_for_all_users``, or the transfer targets ``train.target_categories``
    when empty."""
    return list(cfg.batch.categories_for_all_users or cfg.train.target_categories)


def category_ids(category_index: DataFrame, names: Sequence[str]) -> list[int]:
    """category_idx of natural category ids (an action over the small category index).

    category_index: category string, category_idx int. Unknown names raise ValueError listing
    a few known ones.
    """
    wanted = [str(n) for n in names]
    if not wanted:
        return []
    rows = category_index.where(F.col("category").isin(wanted)).select("category", "category_idx").collect()
    found = {r["category"]: int(r["category_idx"]) for r in rows}
    unknown = [n for n in wanted if n not in found]
    if unknown:
        known = [r["category"] for r in category_index.select("category").orderBy("category").limit(10).collect()]
        raise ValueError(f"batch.categories_for_all_users (or train.target_categories): unknown categories "
                         f"{unknown} (not in silver.category_index); "
                         f"known include {known}")
    return sorted(set(found[n] for n in wanted))


def unengaged_categories(category_index: DataFrame, affinity: DataFrame) -> list[int]:
    """category_idx of the categories without any train activity (an action over small tables).

    category_index: category_idx (silver.category_index); affinity: user_idx, category_idx
    (silver.user_category_affinity, train rows only).
    """
    engaged = affinity.select("category_idx").distinct()
    rows = category_index.select("category_idx").join(engaged, "category_idx", "left_anti").collect()
    return sorted(int(r["category_idx"]) for r in rows)


def served_categories(category_index: DataFrame, affinity: DataFrame, cfg: JobConfig) -> list[int]:
    """Categories every user gets a vector and candidates in: the target categories, and the
    categories nobody has train activity in when ``batch.serve_new_categories`` is on."""
    served = set(category_ids(category_index, target_category_names(cfg)))
    if cfg.batch.serve_new_categories:
        served |= set(unengaged_categories(category_index, affinity))
    return sorted(served)


def transfer_destinations(affinity: DataFrame, transfer: DataFrame, per_user: int) -> DataFrame:
    """Each user's ``per_user`` untouched categories with the highest transfer from their own.

    A destination's score for a user is ``sum over the user's categories src of share(user, src)
    * score(src -> dst)``: where the user spends their activity, weighted by how strongly users
    of that category also engage with the destination. Ties go to the smaller category_idx.

    affinity: user_idx, category_idx, share (silver.user_category_affinity);
    transfer: src_category_idx, dst_category_idx, score (silver.category_transfer).
    Returns user_idx, category_idx, transfer_score.
    """
    if per_user < 0:
        raise ValueError(f"batch.transfer_categories must be >= 0; got {per_user}")
    touched = affinity.select("user_idx", "category_idx")
    scored = (affinity.select("user_idx", F.col("category_idx").alias("src_category_idx"), "share")
              .join(transfer.select("src_category_idx", "dst_category_idx", "score"), "src_category_idx")
              .groupBy("user_idx", F.col("dst_category_idx").alias("category_idx"))
              .agg(F.sum(F.col("share") * F.col("score")).alias("transfer_score"))
              .join(touched, ["user_idx", "category_idx"], "left_anti"))
    rank = Window.partitionBy("user_idx").orderBy(F.col("transfer_score").desc(), F.col("category_idx"))
    return (scored.withColumn("_rank", F.row_number().over(rank)).where(F.col("_rank") <= per_user)
            .select(F.col("user_idx").cast("int"), F.col("category_idx").cast("int"), "transfer_score"))


def serving_pairs(users: DataFrame, affinity: DataFrame, transfer: DataFrame | None, cfg: JobConfig,
                  targets: Sequence[int]) -> DataFrame:
    """The (user_idx, category_idx) pairs that get vectors and candidates under ``cfg.batch``:
    top categories by affinity, transfer destinations (when the transfer matrix exists) and
    ``targets`` (:func:`served_categories`). Export and candidate generation both call this, so
    they agree on the pairs."""
    pairs = user_category_pairs(users, affinity, cfg.batch.user_top_categories, targets)
    if transfer is not None and cfg.batch.transfer_categories > 0:
        destinations = transfer_destinations(affinity, transfer, cfg.batch.transfer_categories)
        pairs = pairs.unionByName(destinations.select("user_idx", "category_idx")).distinct()
    return pairs


def user_category_pairs(users: DataFrame, affinity: DataFrame, top_n: int, targets: Sequence[int]) -> DataFrame:
    """Distinct (user_idx, category_idx): each user's ``top_n`` categories by affinity and ``targets``.

    users: user_idx (e.g. silver.user_index); affinity: user_idx, category_idx, weight, n
    (silver.user_category_affinity). Ties in weight go to the larger n, then the smaller
    category_idx, so the choice is deterministic.
    """
    if top_n < 0:
        raise ValueError(f"batch.user_top_categories must be >= 0; got {top_n}")
    rank = Window.partitionBy("user_idx").orderBy(F.col("weight").desc(), F.col("n").desc(), F.col("category_idx"))
    top = (affinity.select("user_idx", "category_idx", "weight", "n")
           .withColumn("_rank", F.row_number().over(rank))
           .where(F.col("_rank") <= top_n)
           .select(F.col("user_idx").cast("int"), F.col("category_idx").cast("int")))
    pairs = top
    if targets:
        cats = users.sparkSession.createDataFrame([(int(t),) for t in targets], "category_idx int")
        pairs = pairs.unionByName(users.select(F.col("user_idx").cast("int")).distinct().crossJoin(cats))
    return pairs.distinct()
