"""Synthetic events and items with planted cross-category structure, at any scale.

Everything is computed by Spark from ``spark.range`` and hash-derived uniforms
(``xxhash64(seed, tag, row id)``), so the output depends only on the config (not on partitioning
or the number of cores) and nothing is collected to the driver: 10k or 50M events is the same
code.

The planted structure:

- every user belongs to one of ``taste_clusters`` clusters (hash of seed and user);
- item ``j`` has category ``j mod K`` and cluster ``(j div K) mod C``, so every cluster owns a
  slice of every category; within a (category, cluster) slice, a lower ``j`` is more popular;
- an event picks a user (mildly skewed activity), a category (mildly skewed sizes), then with
  probability ``cluster_affinity`` an item of the user's cluster in that category, else any item
  of that category; the item is drawn Zipf-like (``popularity_skew``) by popularity rank. So a
  user's taste in one category predicts their taste in every other;
- ratings: 4-5 for in-cluster picks, uniform 1-5 otherwise;
- timestamps: event ``e`` falls on day ``floor(e * days / events)`` after ``start``, at a hashed
  second of that day, so ``day=d`` generates exactly that day's slice of the full data;
- item titles and texts mix words of the item's cluster vocabulary with random noise words, and
  optional image-like vectors are the cluster's centroid plus noise: content carries the cluster
  signal, which makes cold items scoreable from content;
- with ``new_category_day`` set, from that day on ``new_category_share`` of events go to a new
  category (index K) with ``new_category_items`` new items; half of them come from
  ``new_category_users`` new users (who appear only there), half from existing users;
- with ``new_items_day`` set, from that day on ``new_items_share`` of events pick, by the same
  rules, among ``new_items`` new items of the existing categories (ids after the new
  category's; new item ``m`` has category ``m mod K`` and cluster ``(m div K) mod C``).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.config import EventColumns, EventSource, FileFormat, IngestConfig, ItemColumns, ItemSource
from xrec_spark.config import SyntheticConfig

USER_SKEW = 0.5          # activity skew over users
CATEGORY_SKEW = 0.6      # size skew over categories
NEW_USER_SHARE = 0.5     # of new-category events, the share made by brand-new users
VOCAB_PER_CLUSTER = 12   # words of each cluster's vocabulary
NOISE_WORDS = 2_000      # shared noise vocabulary
_SYLLABLES = ["ka", "lo", "mi", "re", "su", "ta", "no", "vi", "be", "do", "fa", "gu", "hi", "jo", "pe", "ru"]
_WORDS = len(_SYLLABLES) ** 4
_MASK53 = (1 << 53) - 1
_DAY = 86_400


@dataclass(frozen=True)
class SyntheticPaths:
    """Parquet folders written by :func:`write_synthetic`."""

    events: str   # user_id, item_id, category, event_type, event_ts, value
    items: str    # item_id, category, cluster, title, text[, image_vector]
    users: str    # user_id, cluster, first_day (ground truth, not for ingest)


def _check(cfg: SyntheticConfig, day: int | None) -> None:
    if cfg.items < cfg.categories:
        raise ValueError(f"synthetic.items ({cfg.items}) must be >= synthetic.categories ({cfg.categories}) "
                         "so that every category has items")
    if cfg.taste_clusters * VOCAB_PER_CLUSTER + NOISE_WORDS > _WORDS:
        raise ValueError(f"synthetic.taste_clusters ({cfg.taste_clusters}) is too large for the word "
                         f"generator (at most {(_WORDS - NOISE_WORDS) // VOCAB_PER_CLUSTER})")
    for name in ("new_category_day", "new_items_day"):
        if getattr(cfg, name) is not None and getattr(cfg, name) >= cfg.days:
            raise ValueError(f"synthetic.{name} ({getattr(cfg, name)}) must be < synthetic.days ({cfg.days})")
    if day is not None and not 0 <= day < cfg.days:
        raise ValueError(f"day {day} is outside the generated period 0..{cfg.days - 1} (synthetic.days)")


def _uniform(seed: int, tag: str, *cols: Column) -> Column:
    """Deterministic uniform [0, 1) from the seed, a tag and row columns."""
    return F.xxhash64(F.lit(seed), F.lit(tag), *cols).bitwiseAND(F.lit(_MASK53)) / float(1 << 53)


def _hash_mod(seed: int, tag: str, n: int | Column, *cols: Column) -> Column:
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(tag), *cols), n if isinstance(n, Column) else F.lit(n))


def _zipf_rank(n: Column, s: float, u: Column) -> Column:
    """0-based rank in [0, n) with P(rank r) roughly proportional to (r + 1) ** -s (inverse CDF
    of the continuous power law on [1, n + 1))."""
    size = n.cast(T.DoubleType())
    if s == 0:
        rank = F.floor(u * size)
    elif abs(s - 1.0) < 1e-9:
        rank = F.floor(F.exp(u * F.log(size + 1))) - 1
    else:
        a = 1.0 - s
        rank = F.floor(F.pow((F.pow(size + 1, a) - 1) * u + 1, 1.0 / a)) - 1
    return F.least(F.greatest(rank, F.lit(0)), n - 1).cast(T.LongType())


def _slice_size(total: int, offset: Column, stride: int) -> Column:
    """How many j in [0, total) have j = offset + stride * r (r >= 0)."""
    return F.greatest(F.ceil((F.lit(total) - offset) / F.lit(stride)), F.lit(0)).cast(T.LongType())


def _user_cluster(cfg: SyntheticConfig, user: Column) -> Column:
    return _hash_mod(cfg.seed, "cluster", cfg.taste_clusters, user)


def _category_name(k: Column) -> Column:
    return F.format_string("cat%02d", k + 1)


def _event_range(cfg: SyntheticConfig, day: int | None) -> tuple[int, int]:
    if day is None:
        return 0, cfg.events
    # Event e is on day floor(e * days / events): the first event of day d is ceil(d * events / days).
    return -(-day * cfg.events // cfg.days), -(-(day + 1) * cfg.events // cfg.days)


def synthetic_events(spark: SparkSession, cfg: SyntheticConfig, day: int | None = None) -> DataFrame:
    """Events (all, or one day's): user_id, item_id, category, event_type, event_ts, value."""
    _check(cfg, day)
    K, C, seed = cfg.categories, cfg.taste_clusters, cfg.seed
    lo, hi = _event_range(cfg, day)
    e = F.col("id")

    def u(tag: str) -> Column:
        return _uniform(seed, tag, e)

    event_day = F.floor(e * F.lit(cfg.days) / F.lit(cfg.events)).cast(T.LongType())
    user = _zipf_rank(F.lit(cfg.users).cast(T.LongType()), USER_SKEW, u("user"))
    k = _zipf_rank(F.lit(K).cast(T.LongType()), CATEGORY_SKEW, u("category"))
    in_cluster = u("affinity") < F.lit(cfg.cluster_affinity)
    c = _user_cluster(cfg, user)
    n_slice, n_cat = _slice_size(cfg.items, k + K * c, K * C), _slice_size(cfg.items, k, K)
    use_slice = in_cluster & (n_slice > 0)
    r = _zipf_rank(F.when(use_slice, n_slice).otherwise(n_cat), cfg.popularity_skew, u("item"))
    item = F.when(use_slice, k + K * c + K * C * r).otherwise(k + K * r)

    if cfg.new_items_day is not None:
        fresh = (event_day >= cfg.new_items_day) & (u("fresh") < F.lit(cfg.new_items_share))
        f_slice, f_cat = _slice_size(cfg.new_items, k + K * c, K * C), _slice_size(cfg.new_items, k, K)
        use_f_slice = in_cluster & (f_slice > 0)
        r_f = _zipf_rank(F.when(use_f_slice, f_slice).otherwise(f_cat), cfg.popularity_skew, u("item"))
        m = F.when(use_f_slice, k + K * c + K * C * r_f).otherwise(k + K * r_f)
        item = F.when(fresh & (f_cat > 0), F.lit(_new_items_base(cfg)) + m).otherwise(item)

    if cfg.new_category_day is not None:
        is_new = (event_day >= cfg.new_category_day) & (u("new") < F.lit(cfg.new_category_share))
        new_user = F.lit(cfg.users) + F.floor(u("new_user") * cfg.new_category_users).cast(T.LongType())
        user = F.when(is_new & (u("who") < NEW_USER_SHARE), new_user).otherwise(user)
        c_new = _user_cluster(cfg, user)
        n_new_slice = _slice_size(cfg.new_category_items, c_new, C)
        use_new_slice = in_cluster & (n_new_slice > 0)
        r_new = _zipf_rank(F.when(use_new_slice, n_new_slice).otherwise(F.lit(cfg.new_category_items)),
                           cfg.popularity_skew, u("item"))
        new_item = F.lit(cfg.items) + F.when(use_new_slice, c_new + C * r_new).otherwise(r_new)
        item = F.when(is_new, new_item).otherwise(item)
        k = F.when(is_new, F.lit(K).cast(T.LongType())).otherwise(k)

    start = calendar.timegm(cfg.start.timetuple())
    seconds = F.lit(start) + event_day * _DAY + F.floor(u("ts") * _DAY).cast(T.LongType())
    value = F.when(in_cluster, F.when(u("value") < 0.55, 5).otherwise(4)).otherwise(1 + F.floor(u("value") * 5))
    return spark.range(lo, hi, 1, cfg.files).select(
        F.concat(F.lit("u"), user.cast("string")).alias("user_id"),
        F.concat(F.lit("i"), item.cast("string")).alias("item_id"),
        _category_name(k).alias("category"),
        F.lit("rating").alias("event_type"),
        F.timestamp_seconds(seconds).alias("event_ts"),
        value.cast(T.DoubleType()).alias("value"),
    )


def _word(idx: Column) -> Column:
    """A pronounceable pseudo-word, distinct for every idx in [0, 16**4)."""
    syllables = F.array(*[F.lit(s) for s in _SYLLABLES])
    n = len(_SYLLABLES)
    # An odd multiplier permutes [0, 16**4), so neighbouring indexes do not share syllables.
    mixed = F.pmod(idx * 40_503 + 12_345, F.lit(_WORDS))
    return F.concat(*[F.get(syllables, (F.floor(mixed / n**p) % n).cast("int")) for p in range(4)])


def _words(cfg: SyntheticConfig, item: Column, cluster: Column, slots: range, noise: bool) -> list[Column]:
    if noise:
        base = F.lit(cfg.taste_clusters * VOCAB_PER_CLUSTER)
        return [_word(base + _hash_mod(cfg.seed, "noise", NOISE_WORDS, item, F.lit(s))) for s in slots]
    return [_word(cluster * VOCAB_PER_CLUSTER + _hash_mod(cfg.seed, "vocab", VOCAB_PER_CLUSTER, item, F.lit(s)))
            for s in slots]


def _image_vector(cfg: SyntheticConfig, item: Column, cluster: Column) -> Column:
    """Cluster centroid (uniform in [-1, 1) per dimension) plus noise of half that scale."""
    def component(d: Column) -> Column:
        centroid = 2 * _uniform(cfg.seed, "centroid", cluster, d) - 1
        noise = 2 * _uniform(cfg.seed, "pixel", item, d) - 1
        return (centroid + 0.5 * noise).cast(T.FloatType())
    return F.transform(F.sequence(F.lit(0), F.lit(cfg.image_dim - 1)), component)


def _has_new_category(cfg: SyntheticConfig, day: int | None) -> bool:
    return cfg.new_category_day is not None and (day is None or day >= cfg.new_category_day)


def _has_new_items(cfg: SyntheticConfig, day: int | None) -> bool:
    return cfg.new_items_day is not None and (day is None or day >= cfg.new_items_day)


def _new_items_base(cfg: SyntheticConfig) -> int:
    """The first new item's id: after the items and the new category's."""
    return cfg.items + cfg.new_category_items


def synthetic_items(spark: SparkSession, cfg: SyntheticConfig, day: int | None = None) -> DataFrame:
    """Items existing as of ``day`` (all when None): item_id, category, cluster, title, text,
    and image_vector (array<float> of image_dim) when image_dim > 0."""
    _check(cfg, day)
    K, C = cfg.categories, cfg.taste_clusters
    j = F.col("id")
    parts = max(1, min(cfg.files, cfg.items // 250_000 + 1))
    items = spark.range(0, cfg.items, 1, parts).select(j, (j % K).alias("k"), (F.floor(j / K) % C).alias("c"))
    if _has_new_category(cfg, day):
        new = spark.range(cfg.items, cfg.items + cfg.new_category_items, 1, 1).select(
            j, F.lit(K).cast(T.LongType()).alias("k"), ((j - cfg.items) % C).alias("c"))
        items = items.unionByName(new)
    if _has_new_items(cfg, day):
        base = _new_items_base(cfg)
        fresh = spark.range(base, base + cfg.new_items, 1, 1).select(
            j, ((j - base) % K).alias("k"), (F.floor((j - base) / K) % C).alias("c"))
        items = items.unionByName(fresh)
    item, cluster, k = F.col("id"), F.col("c"), F.col("k")
    title = F.concat_ws(" ", *_words(cfg, item, cluster, range(2), False), *_words(cfg, item, cluster, range(1), True))
    text = F.concat_ws(" ", *_words(cfg, item, cluster, range(2, 6), False),
                       *_words(cfg, item, cluster, range(1, 4), True), _category_name(k))
    cols = [F.concat(F.lit("i"), item.cast("string")).alias("item_id"), _category_name(k).alias("category"),
            cluster.cast(T.IntegerType()).alias("cluster"), F.initcap(title).alias("title"), text.alias("text")]
    if cfg.image_dim > 0:
        cols.append(_image_vector(cfg, item, cluster).alias("image_vector"))
    return items.select(*cols)


def synthetic_users(spark: SparkSession, cfg: SyntheticConfig, day: int | None = None) -> DataFrame:
    """Ground truth per user: user_id, cluster, first_day (0, or new_category_day for new users)."""
    _check(cfg, day)
    total = cfg.users + (cfg.new_category_users if _has_new_category(cfg, day) else 0)
    n = F.col("id")
    first_day = F.when(n >= cfg.users, F.lit(cfg.new_category_day or 0)).otherwise(F.lit(0))
    parts = max(1, min(cfg.files, total // 250_000 + 1))
    return spark.range(0, total, 1, parts).select(
        F.concat(F.lit("u"), n.cast("string")).alias("user_id"),
        _user_cluster(cfg, n).cast(T.IntegerType()).alias("cluster"),
        first_day.cast(T.IntegerType()).alias("first_day"))


def write_synthetic(spark: SparkSession, cfg: SyntheticConfig, out_dir: str, day: int | None = None) -> SyntheticPaths:
    """Write events, items and users as Parquet folders under ``out_dir`` (overwriting).

    ``day=None`` writes the whole period to ``events/``, ``items/``, ``users/``; ``day=d`` writes
    only that day's events and the items/users existing by then to ``events-day-NNNN/`` etc.
    """
    _check(cfg, day)
    suffix = "" if day is None else f"-day-{day:04d}"
    root = out_dir.rstrip("/")
    paths = SyntheticPaths(f"{root}/events{suffix}", f"{root}/items{suffix}", f"{root}/users{suffix}")
    synthetic_events(spark, cfg, day).write.mode("overwrite").parquet(paths.events)
    synthetic_items(spark, cfg, day).write.mode("overwrite").parquet(paths.items)
    synthetic_users(spark, cfg, day).write.mode("overwrite").parquet(paths.users)
    return paths


def synthetic_ingest_config(paths: SyntheticPaths, cfg: SyntheticConfig,
                            base: IngestConfig | None = None) -> IngestConfig:
    """An ingest section that reads what :func:`write_synthetic` wrote with ``cfg`` (the other
    rules come from ``base``, default: IngestConfig defaults)."""
    events = EventSource(path=paths.events, format=FileFormat.PARQUET,
                         columns=EventColumns(user_id="user_id", item_id="item_id", event_ts="event_ts",
                                              value="value", event_type="event_type", category="category"))
    items = ItemSource(path=paths.items, format=FileFormat.PARQUET,
                       columns=ItemColumns(item_id="item_id", category="category", title="title", text="text",
                                           image_vector="image_vector" if cfg.image_dim > 0 else None))
    return (base or IngestConfig()).model_copy(update={"events": events, "items": items})
