"""Rankings of a trained two-tower model for the evaluation pairs.

Vectors come from the exported tables when they hold them (gold.item_embeddings,
gold.user_embeddings of the model version); what the export does not hold is computed from
the checkpoint recorded in gold.runs with the export's own inference code
(:mod:`xrec_spark.batch.export`: the model rebuilt once per Python worker, ``mapInPandas``).
The export bounds users to a few categories each, so cross-category evaluation pairs are
typically computed here. Both paths give the same vectors (same checkpoint, same code).

Ranking is :func:`xrec_spark.ranking.spark.rank_by_vectors`: all items of the category, seen
items excluded, ties by lower item_idx, exactly like every baseline and the candidates job.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xrec_spark.batch.export import (
    CONTENT_COLUMNS,
    ModelHandle,
    export_device,
    item_embedding_rows,
    read_checkpoint_bytes,
    user_embedding_rows,
)
from xrec_spark.config import JobConfig
from xrec_spark.eval import columns as C
from xrec_spark.eval.metrics import system_rankings
from xrec_spark.lineage import ModelRun
from xrec_spark.ranking.spark import rank_by_vectors
from xrec_spark.tables import ITEM_EMBEDDINGS, ITEM_FEATURES, USER_EMBEDDINGS, USER_HISTORY, Lakehouse

log = logging.getLogger(__name__)


@dataclass
class _LazyHandle:
    """Broadcasts the checkpoint only when some vector must be computed."""

    lake: Lakehouse
    cfg: JobConfig
    run: ModelRun
    handle: ModelHandle | None = None

    def get(self) -> ModelHandle:
        if self.handle is None:
            sc = self.lake.spark.sparkContext
            content = self.lake.read(ITEM_FEATURES).select(*CONTENT_COLUMNS).toPandas()
            self.handle = ModelHandle(sc.broadcast(read_checkpoint_bytes(self.run.checkpoint_path)),
                                      sc.broadcast(content), uuid.uuid4().hex, export_device(self.cfg),
                                      int(sc.getConf().get("spark.task.cpus", "1")))
        return self.handle

    def release(self) -> None:
        """Drop the broadcasts (idempotent)."""
        if self.handle is not None:
            self.handle.checkpoint.unpersist()
            self.handle.content.unpersist()
            self.handle = None


def _exported(lake: Lakehouse, spec, model_version: str) -> DataFrame | None:
    if not lake.exists(spec):
        return None
    return lake.read(spec).where(F.col("model_version") == model_version)


def model_rankings(lake: Lakehouse, cfg: JobConfig, run: ModelRun, pairs: DataFrame, seen: DataFrame,
                   k: int, system: str) -> tuple[DataFrame, dict[str, int], _LazyHandle]:
    """Rankings (system, user_idx, category_idx, rank, item_idx, score) of ``run`` for ``pairs``.

    Returns the rankings, where the vectors came from (``computed_user_pairs``: pairs not in
    gold.user_embeddings; ``exported_item_vectors``: 1 when gold.item_embeddings had the
    version) - job-level, it runs small count actions - and the handle to ``release()`` once the
    rankings are materialised.
    """
    lazy = _LazyHandle(lake, cfg, run)
    batch = cfg.batch.export_batch_size
    pairs = pairs.select(C.USER, C.CATEGORY).distinct()
    items = _exported(lake, ITEM_EMBEDDINGS, run.model_version)
    exported_items = 0 if items is None else items.limit(1).count()
    if not exported_items:
        log.info("model %s: no exported item vectors, computing them from the checkpoint", run.model_version)
        features = lake.read(ITEM_FEATURES)
        items = item_embedding_rows(features, lazy.get(), run.model_version, batch)
    items = items.select(C.ITEM, C.CATEGORY, C.VECTOR)

    exported_users = _exported(lake, USER_EMBEDDINGS, run.model_version)
    if exported_users is not None:
        have = pairs.join(exported_users.select(C.USER, C.CATEGORY, C.VECTOR), [C.USER, C.CATEGORY])
        missing = pairs.join(have.select(C.USER, C.CATEGORY), [C.USER, C.CATEGORY], "left_anti")
    else:
        have, missing = None, pairs
    n_missing = missing.count()
    users = have
    if n_missing:
        history = lake.read(USER_HISTORY).select(C.USER, "history")
        computed = user_embedding_rows(missing.join(history, C.USER, "left"), lazy.get(), run.model_version,
                                       batch, cfg.features.history_length).select(C.USER, C.CATEGORY, C.VECTOR)
        users = computed if users is None else users.unionByName(computed)
    if users is None:  # no pairs at all
        users = pairs.select(C.USER, C.CATEGORY, F.array().cast("array<float>").alias(C.VECTOR)).limit(0)
    counts = {"computed_user_pairs": int(n_missing), "exported_item_vectors": int(bool(exported_items))}
    rankings = system_rankings(rank_by_vectors(users, items, k, seen, block_size=cfg.eval.users_per_block), system)
    return rankings, counts, lazy
