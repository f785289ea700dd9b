"""Negative sampling for ``silver.training_examples``, in one per-user pass.

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

How: the pools are a dimension table (one row per train item), collected once on the driver
into numpy inverse-CDF arrays (:class:`SamplingPools`) that travel to the executors with the
function. The positives are shuffled once by user (:mod:`xrec_spark.features.per_user`); for
the whole users of an Arrow batch every slot's every attempt is drawn at once, the hits are
found with one sorted lookup against those users' positives, and the first valid attempt per
slot is kept. The same pass attaches each positive's history, so ``silver.training_examples``
costs one shuffle of the positives and no join.

Determinism: every draw is a hash of (seed, user, positive item, slot, attempt)
(:func:`xrec_spark.features.common.uniform01`), independent of partitioning and batching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.config import FeaturesConfig, NegativesConfig, NegativeStrategy
from xrec_spark.features.common import uniform01
from xrec_spark.features.history import check_length, histories, map_positives_by_user
from xrec_spark.features.per_user import column, int_lists
from xrec_spark.tables import TRAINING_EXAMPLES

_NO_ITEM = -1


@dataclass(frozen=True)
class Pool:
    """One strategy's items, grouped by category, with cumulative sampling weights.

    ``items`` is sorted by (category, item); category c's items are ``items[start[c]:start[c+1]]``
    and ``bound`` holds ``c + (cumulative weight / category total)``: item j owns the interval
    ``[bound[j-1], bound[j])`` of category c's unit interval shifted by c, so one sorted search
    over all categories at once finds every draw's item.
    """

    items: np.ndarray   # int32
    bound: np.ndarray   # float64
    start: np.ndarray   # int64, len = number of categories + 2

    @classmethod
    def build(cls, item: np.ndarray, category: np.ndarray, weight: np.ndarray) -> "Pool":
        order = np.lexsort((item, category))
        item, category, weight = item[order], category[order], weight[order].astype(np.float64)
        n_categories = int(category.max()) + 1 if len(category) else 0
        start = np.searchsorted(category, np.arange(n_categories + 2)).astype(np.int64)
        cumulative = np.cumsum(weight)
        before = np.concatenate([[0.0], cumulative])[start[category]]  # total of earlier categories
        total = np.bincount(category, weights=weight, minlength=n_categories + 1)[category]
        return cls(item.astype(np.int32), category + (cumulative - before) / total, start)

    def probabilities(self, category: int) -> dict[int, float]:
        """Item -> probability of being drawn for ``category`` (for tests and inspection)."""
        lo, hi = self._range(np.asarray(category))
        bounds = np.concatenate([[float(category)], self.bound[lo:hi]])
        return {int(i): float(p) for i, p in zip(self.items[lo:hi], np.diff(bounds))}

    def _range(self, category: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[lo, hi)`` of each category's items; empty for a category without any."""
        last = len(self.start) - 1
        c = np.clip(category, 0, last)
        outside = (category < 0) | (category >= last)
        return np.where(outside, 0, self.start[c]), np.where(outside, 0, self.start[np.minimum(c + 1, last)])

    def draw(self, category: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The item whose interval holds each draw ``x`` in [0, 1) for ``category``; -1 where the
        category has no pool."""
        if len(self.items) == 0:
            return np.full(np.shape(x), _NO_ITEM, dtype=np.int64)
        lo, hi = self._range(category)
        found = np.searchsorted(self.bound, category + x, side="right")
        # category + x can round up to category + 1: stay inside the category.
        found = np.clip(found, lo, np.maximum(hi - 1, lo))
        return np.where(hi > lo, self.items[np.minimum(found, len(self.items) - 1)], _NO_ITEM)


@dataclass(frozen=True)
class SamplingPools:
    """Every configured strategy's :class:`Pool`."""

    pools: dict[NegativeStrategy, Pool]

    def __getitem__(self, strategy: NegativeStrategy) -> Pool:
        return self.pools[strategy]


def _hard_pool_mask(category: np.ndarray, count: np.ndarray, item: np.ndarray, size: int) -> np.ndarray:
    """True for the ``size`` most popular items of each category (ties: lower item id first)."""
    order = np.lexsort((item, -count, category))
    sorted_category = category[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_category, sorted_category, side="left")
    mask = np.zeros(len(order), dtype=bool)
    mask[order] = rank < size
    return mask


def sampling_pools(item_features: DataFrame, cfg: NegativesConfig) -> SamplingPools:
    """Collect the train items (a dimension table) into every configured strategy's pool.

    Args:
        item_features: ``item_idx, category_idx, train_count`` (silver.item_features).
        cfg: the negatives config (strategies, popularity_alpha, hard_pool_size).
    """
    strategies = list(dict.fromkeys(cfg.strategies))
    if not strategies:
        raise ValueError("features.negatives.strategies is empty; give at least one of "
                         f"{[s.value for s in NegativeStrategy]} or set per_positive: 0")
    rows = (item_features.where(F.col("train_count") > 0)
            .select("item_idx", "category_idx", F.col("train_count").cast("long")).toArrow())
    item, category, count = (rows.column(c).to_numpy() for c in ("item_idx", "category_idx", "train_count"))
    popularity = count.astype(np.float64) ** cfg.popularity_alpha
    pools = {}
    for strategy in strategies:
        if strategy is NegativeStrategy.UNIFORM:
            pools[strategy] = Pool.build(item, category, np.ones(len(item)))
        elif strategy is NegativeStrategy.POPULARITY:
            pools[strategy] = Pool.build(item, category, popularity)
        else:
            hard = _hard_pool_mask(category, count, item, cfg.hard_pool_size)
            pools[strategy] = Pool.build(item[hard], category[hard], popularity[hard])
    return SamplingPools(pools)


def active_categories(affinity: DataFrame) -> DataFrame:
    """``user_idx, categories`` (sorted array<int>) from silver.user_category_affinity."""
    return affinity.groupBy("user_idx").agg(F.sort_array(F.collect_list("category_idx")).alias("categories"))


@dataclass(frozen=True)
class Drawn:
    """Negatives of a batch of positives: positive row, slot, item and its category."""

    row: np.ndarray
    slot: np.ndarray
    item: np.ndarray
    category: np.ndarray


_NONE = Drawn(*(np.zeros(0, dtype=np.int64) for _ in range(4)))


def _other_category(category: np.ndarray, lists: pa.ListArray, x: np.ndarray) -> np.ndarray:
    """Per row, one of the row's listed categories other than its own (uniform by ``x``; the
    row's own category when it has no other). ``category`` (n, 1, 1); ``x`` (n, slots, attempts)."""
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = lists.values.to_numpy().astype(np.int64)
    own = category[:, 0, 0].astype(np.int64)
    start, length = offsets[:-1], np.diff(offsets)
    # Where the row's own category sits in its sorted list: one search over all rows' lists.
    segment = np.repeat(np.arange(len(own)), length)
    keys = (segment << 32) | values
    at = np.searchsorted(keys, (np.arange(len(own)) << 32) | own)
    listed = (at < start + length) & (values[np.minimum(at, len(values) - 1)] == own) if len(values) else \
        np.zeros(len(own), dtype=bool)
    own_at = np.where(listed, at - start, length)
    others = (length - listed)[:, None, None]
    pick = np.floor(x * others).astype(np.int64)
    pick = pick + (pick >= own_at[:, None, None])  # skip the row's own category
    chosen = values[np.minimum(start[:, None, None] + pick, max(len(values) - 1, 0))] if len(values) else pick
    return np.where(others > 0, chosen, category).astype(np.int64)


def draw_negatives(users: pa.Table, pools: SamplingPools, cfg: NegativesConfig, seed: int) -> Drawn:
    """Every positive's negatives, for a table of whole users (see the module docstring).

    Args:
        users: ``user_idx, item_idx, category_idx`` of every train positive of its users (and
            ``categories``, the users' active categories, when ``cross_category`` is used).
        pools: :func:`sampling_pools` of ``cfg``.
        cfg: negatives config.
        seed: sampling seed.
    """
    if len(users) == 0:
        return _NONE
    user = column(users, "user_idx").astype(np.int64)[:, None, None]
    item = column(users, "item_idx").astype(np.int64)[:, None, None]
    category = column(users, "category_idx").astype(np.int64)[:, None, None]
    slots = np.arange(cfg.per_positive)[None, :, None]
    attempts = np.arange(cfg.attempts)[None, None, :]
    shape = (len(users), cfg.per_positive, cfg.attempts)
    strategy_of = [cfg.strategies[j % len(cfg.strategies)] for j in range(cfg.per_positive)]

    pool_category = np.broadcast_to(category, shape).copy()
    hard = np.array([s is NegativeStrategy.CROSS_CATEGORY for s in strategy_of])
    if hard.any():
        x_category = uniform01(seed, "category", user, item, slots[:, hard], attempts)
        lists = users.column("categories").combine_chunks()
        pool_category[:, hard] = _other_category(category, lists, x_category)
    x = uniform01(seed, "item", user, item, slots, attempts)
    drawn = np.full(shape, _NO_ITEM, dtype=np.int64)
    for strategy in dict.fromkeys(strategy_of):
        mine = np.array([s is strategy for s in strategy_of])
        drawn[:, mine] = pools[strategy].draw(pool_category[:, mine], x[:, mine])

    # A draw is valid unless the category had no pool or it hits one of the user's positives.
    taken = np.unique((user[:, 0, 0] << 32) | item[:, 0, 0])
    key = (user << 32) | np.maximum(drawn, 0)
    at = np.minimum(np.searchsorted(taken, key), len(taken) - 1)
    valid = (drawn != _NO_ITEM) & (taken[at] != key)
    filled = valid.any(axis=2)
    first = valid.argmax(axis=2)
    row, slot = np.nonzero(filled)
    attempt = first[row, slot]
    return Drawn(row, slot, drawn[row, slot, attempt], pool_category[row, slot, attempt])


NEGATIVES = T.StructType([
    T.StructField("user_idx", T.IntegerType(), False), T.StructField("pos_item_idx", T.IntegerType(), False),
    T.StructField("slot", T.IntegerType(), False), T.StructField("item_idx", T.IntegerType(), False),
    T.StructField("category_idx", T.IntegerType(), False), T.StructField("weight", T.FloatType(), False),
])

def _negatives_table(users: pa.Table, pools: SamplingPools, cfg: NegativesConfig, seed: int) -> pa.Table:
    d = draw_negatives(users, pools, cfg, seed)
    return pa.table({
        "user_idx": column(users, "user_idx")[d.row], "pos_item_idx": column(users, "item_idx")[d.row],
        "slot": d.slot.astype(np.int32), "item_idx": d.item.astype(np.int32),
        "category_idx": d.category.astype(np.int32), "weight": column(users, "weight")[d.row],
    })


def group_weights(users: pa.Table, power: float) -> np.ndarray:
    """Each positive's recency weight times n^-power, n = its user's train positives in its
    category (the rows of whole users).

    Evaluation averages over (user, category) groups; training on every event lets the heaviest
    groups dominate the gradient (a user with 500 ratings counts 500 times a user with one).
    ``power`` 1 gives every group the same total weight, as the metric does; 0 leaves the events'
    weights as they are.
    """
    weight = column(users, "weight").astype(np.float32)
    if power == 0 or len(users) == 0:
        return weight
    key = (column(users, "user_idx").astype(np.int64) << 32) | column(users, "category_idx").astype(np.int64)
    _, group, count = np.unique(key, return_inverse=True, return_counts=True)
    return weight * count[group].astype(np.float32) ** np.float32(-power)


def _examples_table(users: pa.Table, pools: SamplingPools | None, cfg: FeaturesConfig) -> pa.Table:
    """The positives of whole users (label 1) followed by their negatives (label 0), each row
    with its positive's history and its positive's :func:`group_weights`."""
    n = len(users)
    d = _NONE if pools is None else draw_negatives(users, pools, cfg.negatives, cfg.seed)
    rows = np.concatenate([np.arange(n), d.row])
    history = histories(users, cfg.history_length, cfg.history_as_of)
    return pa.table({
        "user_idx": column(users, "user_idx")[rows],
        "item_idx": np.concatenate([column(users, "item_idx"), d.item.astype(np.int32)]),
        "category_idx": np.concatenate([column(users, "category_idx"), d.category.astype(np.int32)]),
        "label": np.concatenate([np.ones(n, np.float32), np.zeros(len(d.row), np.float32)]),
        "weight": group_weights(users, cfg.group_weight_power)[rows],
        "history": int_lists(history[rows], cfg.history_length),
    })


def _per_user_input(positives: DataFrame, affinity: DataFrame | None, cfg: NegativesConfig) -> DataFrame:
    """Positives ready for a per-user pass, with the users' ``categories`` for hard negatives."""
    rows = positives.select("user_idx", "item_idx", "category_idx", "ts", "weight")
    if cfg.per_positive and NegativeStrategy.CROSS_CATEGORY in cfg.strategies:
        if affinity is None:
            raise ValueError("cross_category negatives need silver.user_category_affinity (affinity is None)")
        rows = rows.join(active_categories(affinity), "user_idx", "left").withColumn(
            "categories", F.coalesce("categories", F.array().cast("array<int>")))
    return rows


def _check_pools(pools: SamplingPools | None, cfg: NegativesConfig) -> None:
    if cfg.per_positive and pools is None:
        raise ValueError(f"features.negatives.per_positive is {cfg.per_positive} but no sampling pools were "
                         "given; pass sampling_pools(item_features, cfg)")


def sample_negatives(positives: DataFrame, pools: SamplingPools | None, affinity: DataFrame | None,
                     cfg: NegativesConfig, seed: int, partitions: int | None = None) -> DataFrame:
    """Negatives for every train positive (see the module docstring for the rules).

    Args:
        positives: train positives ``user_idx, item_idx, category_idx, ts, weight``.
        pools: :func:`sampling_pools` of the same ``cfg``; may be None when ``per_positive`` is 0.
        affinity: ``user_idx, category_idx`` (used by ``cross_category`` only).
        cfg: negatives config.
        seed: sampling seed.
        partitions: shuffle partitions (default: the session's).

    Returns:
        ``user_idx, pos_item_idx, slot, item_idx, category_idx, weight`` (weight: the
        positive's), at most ``per_positive`` rows per positive.
    """
    _check_pools(pools, cfg)
    if cfg.per_positive == 0:
        return positives.sparkSession.createDataFrame([], NEGATIVES)
    return map_positives_by_user(_per_user_input(positives, affinity, cfg),
                                 lambda u: _negatives_table(u, pools, cfg, seed), NEGATIVES, partitions)


def training_examples(positives: DataFrame, pools: SamplingPools | None, affinity: DataFrame | None,
                      cfg: FeaturesConfig) -> DataFrame:
    """silver.training_examples: every train positive (label 1) and its negatives (label 0), each
    with the positive's history (:func:`xrec_spark.features.history.earlier_items`).

    One shuffle of the positives by user into ``cfg.training_files`` partitions (one file each),
    so all of a user's rows share a file, ordered by time; readers shuffle (petastorm: shuffled
    row groups plus its shuffling queue).

    Args:
        positives: train positives ``user_idx, item_idx, category_idx, ts, weight``.
        pools: :func:`sampling_pools` of ``cfg.negatives``; may be None when ``per_positive`` is 0.
        affinity: silver.user_category_affinity (used by ``cross_category`` only).
        cfg: the features config (negatives, history_length, training_files, seed).

    Returns:
        ``user_idx, item_idx, category_idx, label (float), weight (float), history``.
    """
    if cfg.training_files < 1:
        raise ValueError(f"features.training_files must be >= 1, got {cfg.training_files}")
    check_length(cfg.history_length)
    _check_pools(pools, cfg.negatives)
    use = pools if cfg.negatives.per_positive else None
    return map_positives_by_user(_per_user_input(positives, affinity, cfg.negatives),
                                 lambda u: _examples_table(u, use, cfg), TRAINING_EXAMPLES.schema, cfg.training_files)
