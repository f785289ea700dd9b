"""Hand-made silver tables for the training tests (written with the real Lakehouse, real Delta).

Three categories of 20 items each; users belong to one of 4 taste groups and like the items
whose ``item_idx % 4`` equals their group, in every category (a planted cross-category taste a
model can learn; item texts carry the group as a word so content helps too). Per user: 6 train
positives spread over the categories, 2 negatives per positive, 1 valid positive.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import SparkSession

from xrec_spark.tables import (
    CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS, ITEM_FEATURES, ITEM_INDEX, TRAINING_EXAMPLES, USER_HISTORY,
    USER_INDEX, Lakehouse)

N_USERS, N_CATEGORIES, PER_CATEGORY, HISTORY = 48, 3, 20, 5
N_ITEMS = N_CATEGORIES * PER_CATEGORY
TRAIN_FILES = 8


def category_of(item: int) -> int:
    return (item - 1) // PER_CATEGORY + 1


def liked(user: int) -> list[int]:
    """Items of the user's taste group, in item order (group = user % 4)."""
    return [i for i in range(1, N_ITEMS + 1) if i % 4 == user % 4]


def disliked(user: int) -> list[int]:
    return [i for i in range(1, N_ITEMS + 1) if i % 4 != user % 4]


def user_rows(user: int) -> tuple[list[int], int]:
    """(6 train positives in time order, 1 valid positive) of one user, deterministic."""
    likes = liked(user)
    shift = user % len(likes)
    order = likes[shift:] + likes[:shift]
    return order[:6], order[6]


def write_silver(spark: SparkSession, lake: Lakehouse, train_files: int = TRAIN_FILES) -> dict[str, int]:
    """Write every silver table training reads; returns the number of training_examples rows."""
    t0 = datetime(2024, 1, 1)
    lake.overwrite(USER_INDEX, spark.createDataFrame(
        [(f"u{u}", u) for u in range(1, N_USERS + 1)], USER_INDEX.schema))
    lake.overwrite(ITEM_INDEX, spark.createDataFrame(
        [(f"i{i}", i) for i in range(1, N_ITEMS + 1)], ITEM_INDEX.schema))
    lake.overwrite(CATEGORY_INDEX, spark.createDataFrame(
        [(f"c{k}", k) for k in range(1, N_CATEGORIES + 1)], CATEGORY_INDEX.schema))
    counts = {i: 0 for i in range(1, N_ITEMS + 1)}
    examples, interactions, histories = [], [], []
    for u in range(1, N_USERS + 1):
        train, valid = user_rows(u)
        bad = disliked(u)
        for step, item in enumerate(train):
            counts[item] += 1
            past = list(reversed(train[:step]))[:HISTORY]
            history = past + [0] * (HISTORY - len(past))
            examples.append((u, item, category_of(item), 1.0, 1.0, history))
            for j in range(2):
                neg = bad[(u * 7 + step * 3 + j * 11) % len(bad)]
                examples.append((u, neg, category_of(neg), 0.0, 1.0, history))
            interactions.append((u, item, category_of(item), t0 + timedelta(days=step), 5.0, 1, 1.0, "train", None))
        interactions.append((u, valid, category_of(valid), t0 + timedelta(days=10), 5.0, 1, 1.0, "valid", "warm"))
        recent = list(reversed(train))[:HISTORY]
        histories.append((u, recent + [0] * (HISTORY - len(recent))))
    lake.overwrite(TRAINING_EXAMPLES, spark.createDataFrame(examples, TRAINING_EXAMPLES.schema)
                   .repartition(train_files))
    lake.overwrite(INTERACTIONS, spark.createDataFrame(interactions, INTERACTIONS.schema))
    lake.overwrite(USER_HISTORY, spark.createDataFrame(histories, USER_HISTORY.schema))
    lake.overwrite(ITEM_FEATURES, spark.createDataFrame(
        [(i, category_of(i), f"item {i} taste{i % 4} category{category_of(i)}", None, None, counts[i])
         for i in range(1, N_ITEMS + 1)], ITEM_FEATURES.schema))
    transfer = [(s, d, 10, 0.5, 1.0 + 0.1 * s, 0.3) for s in range(1, N_CATEGORIES + 1)
                for d in range(1, N_CATEGORIES + 1) if s != d]
    lake.overwrite(CATEGORY_TRANSFER, spark.createDataFrame(transfer, CATEGORY_TRANSFER.schema))
    return {"examples": len(examples)}


# A model small enough for 2 CPU ranks in seconds.
SMALL_MODEL = {"embedding_dim": 16, "hidden_dim": 16, "hash_buckets": 1024, "max_tokens": 8,
               "history_encoder": "mean", "id_dropout": 0.1}
