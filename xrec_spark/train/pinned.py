"""What a training rank builds from the pinned input tables besides its batches: the item
content (silver.item_features) and, with ``model.init_from: autoencoder``, the item rows that
start from the users' profiles (silver.user_history).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from xrec_spark.config import JobConfig
from xrec_spark.model.autoencoder import AutoencoderSettings, profile_item_vectors
from xrec_spark.model.content import ItemContent
from xrec_spark.model.towers import CrossCategoryModel
from xrec_spark.train.loader import read_pinned
from xrec_spark.train.spec import ITEM_FEATURES, USER_HISTORY, TrainSpec

log = logging.getLogger(__name__)


def load_content(spec: TrainSpec, cfg: JobConfig) -> ItemContent:
    """Item content from the pinned silver.item_features files (a dimension table)."""
    table = spec.inputs[ITEM_FEATURES]
    columns = ["item_idx", "category_idx", "text", "train_count", "image_vector", "text_vector"]
    frame = read_pinned(table.files, table.path, columns).to_pandas()
    return ItemContent.from_frame(frame, cfg.model, spec.sizes.n_items)


def init_items_from_profiles(model: CrossCategoryModel, spec: TrainSpec, cfg: JobConfig) -> int:
    """``model.init_from: autoencoder``: the id rows of the items that own one (train positives,
    at least ``model.min_item_count``) start at the item vectors of a Mult-DAE fitted on the
    users' profiles in the pinned silver.user_history (end of train: no look-ahead). Returns
    how many rows it set."""
    if USER_HISTORY not in spec.inputs or not spec.inputs[USER_HISTORY].files:
        raise ValueError("model.init_from=autoencoder needs silver.user_history; run `xrec features` first")
    hist = spec.inputs[USER_HISTORY]
    histories = read_pinned(hist.files, hist.path, ["history"]).column("history").to_pylist()
    profiles = [p for p in (np.asarray(h or [], dtype=np.int64) for h in histories) if (p > 0).any()]
    tower = model.item_tower
    ids = torch.arange(1, tower.ids.num_embeddings, device=tower.content_log_popularity.device)
    owned = ids[(tower.has_id_row(ids) > 0) & (tower.content_log_popularity[ids] > 0)]
    settings = AutoencoderSettings(seed=cfg.model.seed)
    vectors = profile_item_vectors(profiles, owned.cpu().numpy(), cfg.model.embedding_dim, settings)
    model.init_item_rows(owned, vectors)
    log.info("init_from=autoencoder: %d item rows from a Mult-DAE over %d profiles", len(owned), len(profiles))
    return len(owned)
