"""Column names and fixed vocabularies of the evaluation code, in one place.

Every function in ``xrec_spark.eval`` takes its column names as keyword parameters whose defaults
come from here, so a caller with differently named columns renames nothing. The names other
layers share (ranked-list columns, split and slice values) are defined once in
:mod:`xrec_spark.names` and re-exported here, so eval code reads all its names from one module.
"""

from __future__ import annotations

from xrec_spark.names import (  # noqa: F401  (re-exported: see the module doc)
    CATEGORY, COLD_ITEM, COLD_USER, CROSS_CATEGORY, ITEM, RANK, SCORE, TEST, TRAIN, USER, VALID, VECTOR, WARM,
)

# Rankings DataFrame: gold.candidates minus run_date, plus the system that produced it.
SYSTEM = "system"

# silver.interactions columns the evaluation reads.
SPLIT = "split"
SLICE = "slice"
LABEL = "label"
TS = "ts"

# Per-group evaluation frames.
RELEVANT = "relevant"         # array<int> of held-out positives of one group
RANKED = "ranked"             # array<int> of item_idx in rank order (0 = no item)
N_RELEVANT = "n_relevant"

# gold.metrics long format.
METRIC = "metric"
K = "k"
VALUE = "value"
GROUPS = "groups"
CI_LOW = "ci_low"
CI_HIGH = "ci_high"
CATEGORY_NAME = "category"    # gold.metrics.category: a category_idx as text, or an aggregate

# Slices in the order reports show them (the features job's precedence is names.SLICE_PRECEDENCE).
SLICES: tuple[str, ...] = (WARM, CROSS_CATEGORY, COLD_USER, COLD_ITEM)

# Aggregate labels in gold.metrics.category / gold.metrics.slice.
ALL = "all"                   # every slice together (slice column) or every category, micro
MACRO = "macro"               # mean over categories of the per-category means

# Metric names (gold.metrics.metric).
RECALL, NDCG, HIT_RATE, MRR = "recall", "ndcg", "hit_rate", "mrr"
RANK_METRICS: tuple[str, ...] = (RECALL, NDCG, HIT_RATE, MRR)
COVERAGE = "item_coverage"                  # distinct recommended items / catalogue items
POPULARITY_BIAS = "mean_log_popularity"     # mean log(1 + train_count) of recommended items
CATALOGUE_POPULARITY = "catalogue_mean_log_popularity"
