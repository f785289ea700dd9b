"""A hand-made world for the batch tests: 3 categories, 9 items, 6 users.

    category 1 "books": items 1, 2, 3    category 2 "music": items 4, 5, 6
    category 3 "games": items 7, 8, 9    (item 9 is "new": above the tiny model's n_items = 8)

Users 1..5 have interactions; user 6 was indexed after training (no history, above n_users = 5).
With ``user_top_categories = 1`` and target category "games", the wanted pairs are
u1 {1, 3}, u2 {2, 3}, u3 {3}, u4 {1, 3}, u5 {3}, u6 {3}.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from xrec_spark.tables import (
    CATEGORY_INDEX, INTERACTIONS, ITEM_EMBEDDINGS, ITEM_FEATURES, ITEM_INDEX, RUNS, USER_CATEGORY_AFFINITY,
    USER_EMBEDDINGS, USER_HISTORY, USER_INDEX, Lakehouse,
)

HISTORY_LENGTH = 4
CATEGORIES = [("books", 1), ("music", 2), ("games", 3)]
ITEM_CATEGORY = {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2, 7: 3, 8: 3, 9: 3}
TRAIN_COUNT = {1: 3, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 0, 8: 2, 9: 6}
TEXT = {1: "old war novel", 2: "space opera novel", 3: "cook book", 4: "jazz live album", 5: "piano sonatas",
        6: "rock album", 7: "chess set", 8: "space strategy game", 9: "new party game"}
# (user, item) seen, any split
SEEN = [(1, 1), (1, 3), (1, 4), (2, 5), (2, 6), (2, 1), (3, 9), (4, 2)]
# (user, category, n, weight)
AFFINITY = [(1, 1, 2, 2.0), (1, 2, 1, 1.0), (2, 2, 2, 3.0), (2, 1, 1, 1.0), (3, 3, 1, 1.0), (4, 1, 1, 0.5)]
HISTORY = {1: [3, 1, 4, 0], 2: [5, 6, 1, 0], 3: [8, 0, 0, 0], 4: [2, 0, 0, 0], 5: [0, 0, 0, 0], 6: [0, 0, 0, 0]}
USERS = [1, 2, 3, 4, 5, 6]
WANTED_PAIRS = {(1, 1), (1, 3), (2, 2), (2, 3), (3, 3), (4, 1), (4, 3), (5, 3), (6, 3)}
BATCH = {"top_k": 2, "user_top_categories": 1, "categories_for_all_users": ["games"], "users_per_block": 2}
FEATURES = {"history_length": HISTORY_LENGTH}
T0 = datetime(2024, 1, 1)


def write_silver(lake: Lakehouse) -> None:
    """The silver tables export and candidates read."""
    spark = lake.spark

    def put(spec, rows):
        lake.overwrite(spec, spark.createDataFrame(rows, spec.schema))

    put(CATEGORY_INDEX, CATEGORIES)
    put(USER_INDEX, [(f"u{u}", u) for u in USERS])
    put(ITEM_INDEX, [(f"i{i}", i) for i in ITEM_CATEGORY])
    put(ITEM_FEATURES, [(i, ITEM_CATEGORY[i], TEXT[i], None, None, TRAIN_COUNT[i]) for i in ITEM_CATEGORY])
    put(USER_HISTORY, [(u, h) for u, h in HISTORY.items()])
    put(USER_CATEGORY_AFFINITY, [(u, c, n, w, 1.0, T0) for u, c, n, w in AFFINITY])
    put(INTERACTIONS, [(u, i, ITEM_CATEGORY[i], T0, 5.0, 1, 1.0, "train", None) for u, i in SEEN])


# Hand-made 2-d embeddings of model "m1" for the candidates tests.
ITEM_VECTORS = {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 1.0], 4: [2.0, 0.0], 5: [0.0, 2.0], 6: [1.0, -1.0],
                7: [1.0, 0.0], 8: [0.0, 1.0], 9: [-1.0, -1.0]}
USER_VECTORS = {(1, 1): [1.0, 0.5], (1, 3): [0.0, 1.0], (2, 2): [1.0, 1.0], (2, 3): [1.0, 0.0],
                (3, 3): [-1.0, 0.0], (4, 1): [0.0, 1.0], (4, 3): [1.0, 1.0], (5, 3): [0.5, 0.0],
                (1, 2): [1.0, 0.0]}  # (1, 2) is not a wanted pair: it must not produce candidates

# Worked out by hand from the vectors above, k = 2, seen items excluded:
# (user, category, rank, item, score, source)
EXPECTED = [
    (1, 1, 1, 2, 0.5, "model"),                               # items 1, 3 seen
    (1, 3, 1, 8, 1.0, "model"), (1, 3, 2, 7, 0.0, "model"),
    (2, 2, 1, 4, 2.0, "model"),                               # items 5, 6 seen
    (2, 3, 1, 7, 1.0, "model"), (2, 3, 2, 8, 0.0, "model"),
    (3, 3, 1, 8, 0.0, "model"), (3, 3, 2, 7, -1.0, "model"),  # item 9 seen
    (4, 1, 1, 3, 1.0, "model"), (4, 1, 2, 1, 0.0, "model"),   # item 2 seen
    (4, 3, 1, 7, 1.0, "model"), (4, 3, 2, 8, 1.0, "model"),   # tie: smaller item_idx first
    (5, 3, 1, 7, 0.5, "model"), (5, 3, 2, 8, 0.0, "model"),
    (6, 3, 1, 9, 6.0, "fallback"), (6, 3, 2, 8, 2.0, "fallback"),  # no vector: popularity (item 7 has 0)
]


def write_hand_embeddings(lake: Lakehouse, model_version: str = "m1") -> None:
    spark = lake.spark
    items = [(i, ITEM_CATEGORY[i], model_version, v, TRAIN_COUNT[i] == 0) for i, v in ITEM_VECTORS.items()]
    users = [(u, c, model_version, v) for (u, c), v in USER_VECTORS.items()]
    lake.overwrite(ITEM_EMBEDDINGS, spark.createDataFrame(items, ITEM_EMBEDDINGS.schema))
    lake.overwrite(USER_EMBEDDINGS, spark.createDataFrame(users, USER_EMBEDDINGS.schema))


def write_run(lake: Lakehouse, model_version: str, checkpoint: Path, finished: datetime = T0) -> None:
    """One gold.runs row pointing at ``checkpoint``."""
    row = (f"run-{model_version}", model_version, "cfg", {"silver.training_examples": 0}, {"loss": 0.5},
           str(checkpoint), finished, finished, None)
    lake.append(RUNS, lake.spark.createDataFrame([row], RUNS.schema))


def assert_same_rows(actual, expected) -> None:
    """DataFrames equal ignoring order, duplicates counted (exceptAll both ways plus counts)."""
    assert actual.count() == expected.count()
    assert actual.exceptAll(expected).count() == 0
    assert expected.exceptAll(actual).count() == 0
