"""The candidates job as one library call: embeddings -> gold.candidates for one run date.

Pairs (:mod:`xrec_spark.batch.pairs`) with a user vector of the model get the top
``batch.top_k`` items of the category by inner product (``source = "model"``); pairs without
one (users indexed after the export, users with no history and no id embedding) get the
category's most popular training items (``source = "fallback"``: the ``popularity_category``
lists the evaluation measures, :mod:`xrec_spark.ranking.popularity`). Items the user already
interacted with (any split) are left out when ``batch.exclude_seen``. The rows for the date
replace any earlier rows of that date (``replaceWhere run_date = ...``): re-running a date is
idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xrec_spark.batch.pairs import served_categories, serving_pairs
from xrec_spark.config import JobConfig, ServedModel
from xrec_spark.lineage import JobRun, latest_model_version, model_run
from xrec_spark.ranking.popularity import rank_by_popularity
from xrec_spark.ranking.spark import rank_by_vectors
from xrec_spark.tables import (
    CANDIDATES, CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS, ITEM_EMBEDDINGS, ITEM_FEATURES, USER_CATEGORY_AFFINITY,
    USER_EMBEDDINGS, USER_INDEX, Lakehouse, sql_string,
)

JOB = "generate_candidates"
MODEL, FALLBACK = "model", "fallback"
INPUTS = (ITEM_FEATURES, USER_INDEX, USER_CATEGORY_AFFINITY, CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS,
          ITEM_EMBEDDINGS, USER_EMBEDDINGS)
OUTPUTS = (CANDIDATES,)


@dataclass(frozen=True)
class CandidatesResult:
    """What a candidates run wrote for its date."""

    run_date: date
    model_version: str | None
    rows: int
    model_pairs: int
    fallback_pairs: int
    input_versions: dict[str, int]
    output_versions: dict[str, int]

    def format(self) -> str:
        return (f"{self.run_date}: {self.rows:,} candidates, model {self.model_version or '-'} for "
                f"{self.model_pairs:,} user x category pairs, popularity fallback for {self.fallback_pairs:,}")


def seen_items(interactions: DataFrame) -> DataFrame:
    """Distinct (user_idx, item_idx) the user interacted with, any split or label."""
    return interactions.select("user_idx", "item_idx").distinct()


def candidate_rows(pairs: DataFrame, user_vectors: DataFrame | None, item_vectors: DataFrame | None,
                   item_features: DataFrame, cfg: JobConfig, exclude: DataFrame | None) -> DataFrame:
    """Model candidates for pairs with a user vector, popularity for the rest.

    pairs: user_idx, category_idx; user_vectors / item_vectors: the embeddings of one model
    (None: no model yet, everything falls back); item_features: silver.item_features.
    Returns user_idx, category_idx, rank, item_idx, score, source.
    """
    b = cfg.batch
    if user_vectors is None or item_vectors is None:
        fallback_pairs = pairs
        model = None
    else:
        model_pairs = user_vectors.join(pairs.select("user_idx", "category_idx"), ["user_idx", "category_idx"])
        model = rank_by_vectors(model_pairs, item_vectors, b.top_k, exclude, search=b.search,
                                block_size=b.users_per_block, faiss_nlist=b.faiss_nlist, faiss_nprobe=b.faiss_nprobe)
        model = model.withColumn("source", F.lit(MODEL))
        fallback_pairs = pairs.join(user_vectors.select("user_idx", "category_idx"),
                                    ["user_idx", "category_idx"], "left_anti")
    fallback = (rank_by_popularity(fallback_pairs, item_features, b.top_k, exclude, b.users_per_block)
                .withColumn("source", F.lit(FALLBACK)))
    return fallback if model is None else model.unionByName(fallback)


def generate_candidates(lake: Lakehouse, cfg: JobConfig, run_date: date,
                        model_version: str | None = None) -> CandidatesResult:
    """Write gold.candidates for ``run_date`` from ``model_version`` (None: latest in gold.runs)."""
    if not isinstance(run_date, date):
        raise TypeError(f"run_date must be a datetime.date; got {type(run_date).__name__}")
    version = model_version or _served_version(lake, cfg)
    with JobRun(lake, JOB, run_date.isoformat()) as job_run:
        result = _generate(lake, cfg, run_date, version)
        job_run.record(result.input_versions, result.output_versions,
                       {"model_version": version, "rows": result.rows, "model_pairs": result.model_pairs,
                        "fallback_pairs": result.fallback_pairs})
    return result


def _served_version(lake: Lakehouse, cfg: JobConfig) -> str | None:
    """The latest model of ``batch.model``: None (popularity lists) when no teacher was trained
    yet, an error when a student is asked for and none was distilled."""
    if cfg.batch.model is ServedModel.STUDENT:
        return model_run(lake, role=ServedModel.STUDENT.value).model_version
    return latest_model_version(lake)


def _generate(lake: Lakehouse, cfg: JobConfig, run_date: date, version: str | None) -> CandidatesResult:
    """Replace gold.candidates of ``run_date`` with the lists of model ``version`` (None: popularity)."""
    inputs = lake.versions(INPUTS)

    def read(spec):
        return lake.read(spec, inputs.get(spec.qualified))

    affinity = read(USER_CATEGORY_AFFINITY)
    targets = served_categories(read(CATEGORY_INDEX), affinity, cfg)
    transfer = read(CATEGORY_TRANSFER) if CATEGORY_TRANSFER.qualified in inputs else None
    pairs = serving_pairs(read(USER_INDEX), affinity, transfer, cfg, targets)
    users = items = None
    if version is not None and lake.exists(USER_EMBEDDINGS) and lake.exists(ITEM_EMBEDDINGS):
        mv = sql_string(version, "model_version")
        users = read(USER_EMBEDDINGS).where(f"model_version = {mv}").select("user_idx", "category_idx", "vector")
        items = read(ITEM_EMBEDDINGS).where(f"model_version = {mv}").select("item_idx", "category_idx", "vector")
    if version is not None and (items is None or items.limit(1).count() == 0):
        raise RuntimeError(f"model {version} has no rows in {ITEM_EMBEDDINGS.qualified}: run `xrec embeddings "
                           f"--model-version {version}` first (or the nightly job, which does both)")
    exclude = seen_items(read(INTERACTIONS)) if cfg.batch.exclude_seen else None
    rows = candidate_rows(pairs, users, items, read(ITEM_FEATURES), cfg, exclude)
    rows = rows.select(
        F.lit(run_date).alias("run_date"), "user_idx", "category_idx", "rank", "item_idx", "score", "source",
        F.when(F.col("source") == MODEL, F.lit(version)).cast("string").alias("model_version"),
    )
    day = run_date.isoformat()
    lake.overwrite(CANDIDATES, rows, replace_where=f"run_date = '{day}'", job=JOB)
    stats = (lake.read(CANDIDATES).where(F.col("run_date") == F.lit(run_date))
             .groupBy("source").agg(F.count("*").alias("rows"),
                                     F.countDistinct("user_idx", "category_idx").alias("pairs"))
             .collect())
    by_source = {r["source"]: (int(r["rows"]), int(r["pairs"])) for r in stats}
    outputs = lake.versions(OUTPUTS)
    return CandidatesResult(run_date, version, sum(r for r, _ in by_source.values()),
                            by_source.get(MODEL, (0, 0))[1], by_source.get(FALLBACK, (0, 0))[1],
                            inputs, outputs)
