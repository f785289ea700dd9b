"""Embedding export: the trained model's item and user x category vectors back to Delta.

Distributed inference with ``mapInPandas``: the checkpoint file's bytes and the item content
(rows of silver.item_features) are broadcast once; each Python worker rebuilds the model from
them the first time it needs it and keeps it for later tasks (:class:`ModelHandle`). Batches of
``batch.export_batch_size`` rows go through ``item_vectors`` / ``user_vectors`` on
``batch.device`` (``auto``: the GPU when the driver sees CUDA, else the CPU).

Tables: gold.item_embeddings (every item of silver.item_features; items the model never saw
in training get their vector from the content tower, ``cold = train_count == 0``) and
gold.user_embeddings (the pairs of :mod:`xrec_spark.batch.pairs`), each written with
``replaceWhere model_version = ...`` so a re-run replaces its own rows and nothing else.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import fsspec
import numpy as np
import pandas as pd
from pyspark import Broadcast
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.batch.pairs import served_categories, serving_pairs
from xrec_spark.config import InferenceDevice, JobConfig
from xrec_spark.lineage import JobRun, ModelRun, model_run
from xrec_spark.tables import (
    CATEGORY_INDEX, CATEGORY_TRANSFER, ITEM_EMBEDDINGS, ITEM_FEATURES, USER_CATEGORY_AFFINITY, USER_EMBEDDINGS,
    USER_HISTORY, USER_INDEX, Lakehouse, sql_string,
)

log = logging.getLogger(__name__)

JOB = "export_embeddings"
INPUTS = (ITEM_FEATURES, USER_HISTORY, USER_CATEGORY_AFFINITY, USER_INDEX, CATEGORY_INDEX, CATEGORY_TRANSFER)
OUTPUTS = (ITEM_EMBEDDINGS, USER_EMBEDDINGS)
CONTENT_COLUMNS = ("item_idx", "category_idx", "text", "image_vector", "text_vector", "train_count")
ITEM_SCHEMA = T.StructType([
    T.StructField("item_idx", T.IntegerType(), False), T.StructField("category_idx", T.IntegerType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("vector", T.ArrayType(T.FloatType(), False), False), T.StructField("cold", T.BooleanType(), False),
])
USER_SCHEMA = T.StructType([
    T.StructField("user_idx", T.IntegerType(), False), T.StructField("category_idx", T.IntegerType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("vector", T.ArrayType(T.FloatType(), False), False),
])


@dataclass(frozen=True)
class ModelHandle:
    """What a Python worker needs to rebuild the model: broadcast checkpoint bytes and content.

    Pickled into the ``mapInPandas`` closures (broadcasts travel as ids). ``token`` keys the
    per-worker cache, ``device`` is "cuda" or "cpu", ``threads`` the torch threads of a task.
    """

    checkpoint: Broadcast
    content: Broadcast
    token: str
    device: str
    threads: int

    def get(self) -> Any:
        """The model in eval mode on ``device``, loaded at most once per worker process."""
        if self.token not in _WORKER_MODELS:
            _WORKER_MODELS.clear()  # one model at a time per worker: free the previous one
            _WORKER_MODELS[self.token] = self._load()
        return _WORKER_MODELS[self.token]

    def _load(self) -> Any:
        import torch

        from xrec_spark.model.checkpoint import load_model_on_items

        torch.set_num_threads(max(1, self.threads))
        frame: pd.DataFrame = self.content.value
        with tempfile.TemporaryDirectory(prefix="xrec-model-") as tmp:
            path = Path(tmp) / "model.pt"
            path.write_bytes(self.checkpoint.value)
            model, _ = load_model_on_items(path, frame)
        return model.to(self.device).eval()


# Per Python worker: the model of the running export, so tasks after the first reuse it.
_WORKER_MODELS: dict[str, Any] = {}


def export_device(cfg: JobConfig) -> str:
    """The torch device the workers run the towers on (``batch.device``): "cpu", "cuda", or for
    ``auto`` "cuda" when the driver sees a CUDA device, else "cpu". ``cuda`` is not checked on
    the driver: executors may have GPUs that a driver without one cannot see."""
    wanted = cfg.batch.device
    if wanted is not InferenceDevice.AUTO:
        return wanted.value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _batches(frames: Iterator[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    for frame in frames:
        for start in range(0, len(frame), size):
            yield frame.iloc[start:start + size]


def item_embedding_rows(items: DataFrame, handle: ModelHandle, model_version: str, batch_size: int) -> DataFrame:
    """items: item_idx, category_idx, train_count -> rows of gold.item_embeddings (vector [D])."""

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        model = handle.get()
        for batch in _batches(frames, batch_size):
            idx = torch.as_tensor(batch["item_idx"].to_numpy(dtype=np.int64), device=handle.device)
            with torch.inference_mode():
                vectors = model.item_vectors(idx).float().cpu().numpy()
            yield pd.DataFrame({
                "item_idx": batch["item_idx"].to_numpy(dtype=np.int32),
                "category_idx": batch["category_idx"].to_numpy(dtype=np.int32),
                "model_version": model_version, "vector": list(vectors),
                "cold": batch["train_count"].to_numpy() == 0,
            })

    return items.select("item_idx", "category_idx", "train_count").mapInPandas(run, ITEM_SCHEMA)


def user_embedding_rows(users: DataFrame, handle: ModelHandle, model_version: str, batch_size: int,
                        history_length: int) -> DataFrame:
    """users: user_idx, category_idx, history array<int> (null = no history) -> gold.user_embeddings rows.

    A pair whose user has neither history nor an id embedding (user_idx above the model's
    n_users) gets no row: such a vector would be the same for everyone; candidates fall back
    to popularity for it. A pair in a category the model was not trained with (category_idx
    above its n_categories: the category appeared after training) gets no row either: the model
    has no head for it, so candidates fall back to popularity there until the next retrain.
    """

    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        model = handle.get()
        n_users, n_categories = model.sizes.n_users, model.sizes.n_categories
        for batch in _batches(frames, batch_size):
            history = _history_matrix(batch["history"].tolist(), history_length)
            user = batch["user_idx"].to_numpy(dtype=np.int64)
            category = batch["category_idx"].to_numpy(dtype=np.int64)
            keep = (((history != 0).any(axis=1) | ((user >= 1) & (user <= n_users)))
                    & (category >= 1) & (category <= n_categories))
            if not keep.any():
                continue
            t = {name: torch.as_tensor(a, device=handle.device) for name, a in
                 (("user", user[keep]), ("history", history[keep]),
                  ("category", category[keep]))}
            with torch.inference_mode():
                vectors = model.user_vectors(t["user"], t["history"], t["category"]).float().cpu().numpy()
            yield pd.DataFrame({
                "user_idx": user[keep].astype(np.int32),
                "category_idx": batch["category_idx"].to_numpy(dtype=np.int32)[keep],
                "model_version": model_version, "vector": list(vectors),
            })

    return users.select("user_idx", "category_idx", "history").mapInPandas(run, USER_SCHEMA)


def _history_matrix(histories: list[Any], length: int) -> np.ndarray:
    """long [B, length]: each history cut/0-padded to ``length`` (None = all padding)."""
    out = np.zeros((len(histories), length), dtype=np.int64)
    for row, h in enumerate(histories):
        if h is not None and len(h):
            ids = np.asarray(h, dtype=np.int64)[:length]
            out[row, : ids.size] = ids
    return out


def read_checkpoint_bytes(path: str) -> bytes:
    """The checkpoint file's bytes (local path or any fsspec URL)."""
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise RuntimeError(f"gold.runs checkpoint_path {path} does not exist here; was the checkpoint moved? "
                           "re-run training or pass --model-version of a model whose file exists") from e


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: counts per table and the versions it read and wrote."""

    model_version: str
    items: int
    cold_items: int
    users: int
    user_pairs: int
    input_versions: dict[str, int]
    output_versions: dict[str, int]

    def format(self) -> str:
        return (f"model {self.model_version}: {self.items:,} item vectors ({self.cold_items:,} cold, from content), "
                f"{self.user_pairs:,} user x category vectors for {self.users:,} users")


def export_embeddings(lake: Lakehouse, cfg: JobConfig, model_version: str | None = None) -> ExportResult:
    """Export item and user x category vectors of ``model_version`` (None: latest in gold.runs)."""
    run: ModelRun = model_run(lake, model_version, cfg.batch.model.value)
    with JobRun(lake, JOB, run.model_version) as job_run:
        result = _export(lake, cfg, run)
        job_run.record(result.input_versions, result.output_versions,
                       {"model_version": run.model_version, "run_id": run.run_id, "items": result.items,
                        "cold_items": result.cold_items, "users": result.users, "user_pairs": result.user_pairs})
    return result


def _export(lake: Lakehouse, cfg: JobConfig, run: ModelRun) -> ExportResult:
    """Write both embedding tables of ``run``'s model; returns what they hold for it."""
    where = f"model_version = {sql_string(run.model_version, 'model_version')}"
    device = export_device(cfg)
    checkpoint = read_checkpoint_bytes(run.checkpoint_path)
    inputs = lake.versions(INPUTS)
    # Before any vector is written: an unknown served category fails here (small tables).
    affinity = lake.read(USER_CATEGORY_AFFINITY, inputs.get(USER_CATEGORY_AFFINITY.qualified))
    targets = served_categories(lake.read(CATEGORY_INDEX, inputs.get(CATEGORY_INDEX.qualified)), affinity, cfg)
    sc = lake.spark.sparkContext
    features = lake.read(ITEM_FEATURES, inputs.get(ITEM_FEATURES.qualified))
    content = features.select(*CONTENT_COLUMNS).toArrow().to_pandas()
    handle = ModelHandle(sc.broadcast(checkpoint), sc.broadcast(content),
                         uuid.uuid4().hex, device, int(sc.getConf().get("spark.task.cpus", "1")))
    try:
        items = item_embedding_rows(features, handle, run.model_version, cfg.batch.export_batch_size)
        lake.overwrite(ITEM_EMBEDDINGS, items, replace_where=where, job=JOB)
        transfer = (lake.read(CATEGORY_TRANSFER, inputs[CATEGORY_TRANSFER.qualified])
                    if CATEGORY_TRANSFER.qualified in inputs else None)
        pairs = serving_pairs(lake.read(USER_INDEX, inputs.get(USER_INDEX.qualified)), affinity, transfer, cfg,
                              targets)
        history = lake.read(USER_HISTORY, inputs.get(USER_HISTORY.qualified)).select("user_idx", "history")
        users = user_embedding_rows(pairs.join(history, "user_idx", "left"), handle, run.model_version,
                                    cfg.batch.export_batch_size, cfg.features.history_length)
        lake.overwrite(USER_EMBEDDINGS, users, replace_where=where, job=JOB)
    finally:
        handle.checkpoint.unpersist()
        handle.content.unpersist()
    written_items = lake.read(ITEM_EMBEDDINGS).where(where)
    counts = written_items.agg(F.count("*").alias("n"), F.sum(F.col("cold").cast("int")).alias("cold")).first()
    written_users = lake.read(USER_EMBEDDINGS).where(where)
    user_counts = written_users.agg(F.count("*").alias("n"), F.countDistinct("user_idx").alias("u")).first()
    outputs = lake.versions(OUTPUTS)
    return ExportResult(run.model_version, int(counts["n"]), int(counts["cold"] or 0), int(user_counts["u"]),
                        int(user_counts["n"]), inputs, outputs)
