"""Names every layer shares: columns of a ranked list, split and slice values of silver.interactions,
the characters of an id that goes into a predicate.

The features job writes the split and slice values, training's validation and the evaluation
read them, and the ranking engine produces the ranked-list columns that candidate generation and
evaluation both consume. They are defined here, below all of those packages, so that each can
import them without depending on another (features must not import eval). Pure constants: no
imports, so importing this from a torch-only process costs nothing.
"""

from __future__ import annotations

# Columns of a ranked list (gold.candidates minus run_date and source) and of the vectors ranked.
USER = "user_idx"
ITEM = "item_idx"
CATEGORY = "category_idx"
RANK = "rank"                 # 1-based position in the ranked list
SCORE = "score"
VECTOR = "vector"             # array<float>: a user x category or an item embedding

# Values of silver.interactions.split.
TRAIN, VALID, TEST = "train", "valid", "test"

# Values of silver.interactions.slice (valid/test rows; train rows have none).
COLD_ITEM, COLD_USER, WARM, CROSS_CATEGORY = "cold_item", "cold_user", "warm", "cross_category"
# The order the features job tries them in: the first that applies to an interaction wins.
SLICE_PRECEDENCE: tuple[str, ...] = (COLD_ITEM, COLD_USER, WARM, CROSS_CATEGORY)

# Ids written into a replaceWhere predicate (eval_id, model_version): letters, digits and . _ : + -
# only, so a quote can never widen the predicate (tables.sql_string; eval.eval_id is checked
# against it when the config loads).
SAFE_ID_PATTERN = r"^[A-Za-z0-9._:+\-]+$"
