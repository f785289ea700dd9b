"""Human-readable sample of gold.candidates: a user's list in a category they never touched."""

from __future__ import annotations

from datetime import date

from pyspark.sql import functions as F

from xrec_spark.tables import CANDIDATES, CATEGORY_INDEX, INTERACTIONS, ITEM_INDEX, USER_INDEX, Lakehouse

INPUTS = (CANDIDATES, INTERACTIONS, CATEGORY_INDEX, ITEM_INDEX, USER_INDEX)
OUTPUTS = ()   # lines to print only


def cross_category_sample(lake: Lakehouse, run_date: date, k: int = 5, users: int = 1) -> list[str]:
    """Lines showing the top ``k`` model candidates of ``users`` users for a category in which
    they have no interaction at all, with natural ids and each item's category (small actions)."""
    cands = lake.read(CANDIDATES).where((F.col("run_date") == F.lit(run_date)) & (F.col("source") == "model"))
    touched = lake.read(INTERACTIONS).select("user_idx", "category_idx").distinct()
    untouched = cands.join(touched, ["user_idx", "category_idx"], "left_anti")
    # One (user, category) per user: the smallest category with at least k candidates.
    picks = (untouched.groupBy("user_idx", "category_idx").agg(F.count("*").alias("n"))
             .where(F.col("n") >= k).groupBy("user_idx").agg(F.min("category_idx").alias("category_idx"))
             .orderBy("user_idx").limit(users).collect())
    if not picks:
        return [f"no user has model candidates for {run_date} in a category they never touched"]
    cats = lake.read(CATEGORY_INDEX)
    names = {r["category_idx"]: r["category"] for r in cats.collect()}
    lines = []
    for pick in picks:
        user, cat = pick["user_idx"], pick["category_idx"]
        user_id = lake.read(USER_INDEX).where(F.col("user_idx") == user).first()["user_id"]
        history = (lake.read(INTERACTIONS).where(F.col("user_idx") == user).groupBy("category_idx").count()
                   .orderBy(F.desc("count")).limit(5).collect())
        seen = ", ".join(f"{names.get(r['category_idx'], r['category_idx'])} ({r['count']})" for r in history)
        lines.append(f"user {user_id}: history in {seen}; never touched {names.get(cat, cat)}. Top {k} there:")
        rows = (untouched.where((F.col("user_idx") == user) & (F.col("category_idx") == cat)
                                & (F.col("rank") <= k))
                .join(lake.read(ITEM_INDEX), "item_idx").orderBy("rank").collect())
        lines += [f"  {r['rank']:>2}. item {r['item_id']} (category {names.get(r['category_idx'])}) "
                  f"score {r['score']:.3f}" for r in rows]
    return lines
