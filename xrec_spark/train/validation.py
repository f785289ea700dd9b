"""Early-stopping metric: NDCG@K on the valid split of the target categories, full ranking.

A validation group is a (user, category) pair with at least one positive in the valid split
of silver.interactions, for a target category. Its candidates are **all** items of that
category (silver.item_features, cold ones included) minus the user's train-split items in
it; its relevant set is the valid positives. The ranking and NDCG are those of
:mod:`xrec_spark.ranking.dense` and :mod:`xrec_spark.eval.reference_metrics`, the definitions
of record, so training's early-stopping figure and the evaluation job's agree. Runs on rank 0
only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from xrec_spark.eval.reference_metrics import ndcg_at_k
from xrec_spark.names import COLD_USER, CROSS_CATEGORY, TRAIN, WARM
from xrec_spark.ranking.dense import ranked_items

if TYPE_CHECKING:
    from xrec_spark.config import JobConfig
    from xrec_spark.train.spec import TrainSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationSet:
    """Validation groups as arrays; ``G`` groups, history length ``L``.

    ``user_idx, category_idx: int64 [G]``; ``history: int64 [G, L]`` (each user's history as of
    the end of the train split); ``relevant[g]`` / ``exclude[g]``: item_idx arrays;
    ``category_items[c]``: sorted item_idx of category ``c`` (the ranking candidates);
    ``user_slice: str [G]``: the group's user slice as the evaluation names it (``warm``: train
    rows in this category, ``cross_category``: only in others, ``cold_user``: none), so the
    early-stopping curve can be read per slice: on a temporal split the valid weeks can hold a
    very different mix of new and returning users than the test weeks.
    """

    user_idx: np.ndarray
    category_idx: np.ndarray
    history: np.ndarray
    relevant: list[np.ndarray]
    exclude: list[np.ndarray]
    category_items: dict[int, np.ndarray]
    user_slice: np.ndarray

    @property
    def groups(self) -> int:
        return int(self.user_idx.shape[0])


def build_validation(interactions: pd.DataFrame, items: pd.DataFrame, histories: pd.DataFrame,
                     targets: Sequence[int], history_length: int, max_groups: int, seed: int) -> ValidationSet:
    """Validation groups from plain frames.

    ``interactions``: user_idx, item_idx, category_idx, split, label (silver.interactions);
    ``items``: item_idx, category_idx (silver.item_features); ``histories``: user_idx, history
    (silver.user_history). More than ``max_groups`` groups are sampled down with ``seed``.
    """
    targets = sorted({int(t) for t in targets})
    inter = interactions[interactions["category_idx"].isin(targets)]
    valid = inter[(inter["split"] == "valid") & (inter["label"] > 0)]
    grouped = valid.groupby(["user_idx", "category_idx"], sort=True)["item_idx"].apply(
        lambda s: np.unique(s.to_numpy(np.int64)))
    if len(grouped) > max_groups:
        keep = np.sort(np.random.default_rng(seed).choice(len(grouped), size=max_groups, replace=False))
        grouped = grouped.iloc[keep]
    keys = grouped.index.to_frame(index=False)
    users = keys["user_idx"].to_numpy(np.int64)
    cats = keys["category_idx"].to_numpy(np.int64)

    train = inter[inter["split"] == "train"]
    seen = train.groupby(["user_idx", "category_idx"])["item_idx"].apply(lambda s: np.unique(s.to_numpy(np.int64)))
    empty = np.zeros(0, dtype=np.int64)
    exclude = [seen.get((u, c), empty) for u, c in zip(users.tolist(), cats.tolist())]

    hist = np.zeros((len(users), history_length), dtype=np.int64)
    if len(histories):
        by_user = dict(zip(histories["user_idx"].astype(np.int64).tolist(), histories["history"].tolist()))
        for g, u in enumerate(users.tolist()):
            h = by_user.get(u)
            if h is not None:
                h = np.asarray(h, dtype=np.int64)[:history_length]
                hist[g, : len(h)] = h

    category_items = {
        int(c): np.sort(items.loc[items["category_idx"] == c, "item_idx"].to_numpy(np.int64))
        for c in np.unique(cats).tolist()
    }
    # Known from the train rows of every category, target or not: a user with train rows only
    # outside the targets is a cross-category user, not a cold one.
    every_train = interactions.loc[interactions["split"] == TRAIN, "user_idx"].to_numpy(np.int64)
    known = np.isin(users, every_train)
    warm = np.array([e.size > 0 for e in exclude], dtype=bool)
    user_slice = np.where(warm, WARM, np.where(known, CROSS_CATEGORY, COLD_USER))
    return ValidationSet(users, cats, hist, list(grouped.to_numpy()), exclude, category_items, user_slice)


def slice_means(values: np.ndarray, vs: ValidationSet) -> dict[str, float]:
    """Mean of per-group ``values`` in each user slice present (NaN groups left out)."""
    out: dict[str, float] = {}
    for name in (WARM, CROSS_CATEGORY, COLD_USER):
        v = values[(vs.user_slice == name) & ~np.isnan(values)]
        if v.size:
            out[name] = float(v.mean())
    return out


def validation_summary(model: torch.nn.Module, vs: ValidationSet, k: int, device: torch.device,
                       chunk: int = 1024) -> tuple[float, int, dict[str, float]]:
    """``(mean NDCG@k over groups, groups counted, mean per user slice)`` from one scoring pass;
    NaN, 0 and no slices when there is no group."""
    values = group_ndcg(model, vs, k, device, chunk)
    defined = ~np.isnan(values)
    if not defined.any():
        return float("nan"), 0, {}
    return float(values[defined].mean()), int(defined.sum()), slice_means(values, vs)


def validation_ndcg(model: torch.nn.Module, vs: ValidationSet, k: int, device: torch.device,
                    chunk: int = 1024) -> tuple[float, int]:
    """``(mean NDCG@k over groups, groups counted)``; NaN and 0 when there is no group."""
    metric, groups, _ = validation_summary(model, vs, k, device, chunk)
    return metric, groups


@torch.no_grad()
def group_ndcg(model: torch.nn.Module, vs: ValidationSet, k: int, device: torch.device,
               chunk: int = 1024) -> np.ndarray:
    """NDCG@k of each validation group (``float [G]``, NaN where a category has no items).

    ``model`` has ``user_vectors(user_idx [B], history [B, L], category_idx [B]) -> [B, D]`` and
    ``item_vectors(item_idx [N]) -> [N, D]`` (CrossCategoryModel); it is scored in eval mode
    and put back in the mode it was in.
    """
    if vs.groups == 0:
        return np.zeros(0)
    was_training = model.training
    model.eval()
    values = np.full(vs.groups, np.nan)
    try:
        for c, items in vs.category_items.items():
            if items.size == 0:
                continue
            v = model.item_vectors(torch.from_numpy(items).to(device)).float()
            rows = np.nonzero(vs.category_idx == c)[0]
            for start in range(0, rows.size, chunk):
                g = rows[start:start + chunk]
                u = model.user_vectors(torch.from_numpy(vs.user_idx[g]).to(device),
                                       torch.from_numpy(vs.history[g]).to(device),
                                       torch.from_numpy(vs.category_idx[g]).to(device)).float()
                scores = (u @ v.T).cpu().numpy()
                mask = np.zeros(scores.shape, dtype=bool)
                for row, group in enumerate(g.tolist()):
                    seen = vs.exclude[group]
                    pos = np.searchsorted(items, seen)
                    ok = (pos < items.size) & (items[np.minimum(pos, items.size - 1)] == seen)
                    mask[row, pos[ok]] = True
                ranked = ranked_items(scores, items, k, exclude_mask=mask)
                values[g] = ndcg_at_k(ranked, [vs.relevant[i] for i in g.tolist()], k)
    finally:
        model.train(was_training)
    return values


def load_validation(spec: "TrainSpec", cfg: "JobConfig") -> ValidationSet | None:
    """The validation groups of a run from its pinned tables; None (with a log line) when the
    run has no silver.interactions or no silver.item_features to build them from."""
    import pyarrow.dataset as pads

    from xrec_spark.train.loader import read_pinned
    from xrec_spark.train.spec import INTERACTIONS, ITEM_FEATURES, USER_HISTORY

    if INTERACTIONS not in spec.inputs or ITEM_FEATURES not in spec.inputs:
        log.warning("no %s or %s in the run's inputs: training without validation or early stopping",
                    INTERACTIONS, ITEM_FEATURES)
        return None
    inter = spec.inputs[INTERACTIONS]
    targets = list(spec.target_categories)
    where = pads.field("split").isin(["train", "valid"])
    interactions = read_pinned(inter.files, inter.path, ["user_idx", "item_idx", "category_idx", "split", "label"],
                               inter.partition_by, where).to_pandas()
    feats = spec.inputs[ITEM_FEATURES]
    items = read_pinned(feats.files, feats.path, ["item_idx", "category_idx"]).to_pandas()
    if USER_HISTORY in spec.inputs and spec.inputs[USER_HISTORY].files:
        hist = spec.inputs[USER_HISTORY]
        histories = read_pinned(hist.files, hist.path, ["user_idx", "history"]).to_pandas()
    else:
        histories = pd.DataFrame({"user_idx": [], "history": []})
    vs = build_validation(interactions, items, histories, targets, cfg.features.history_length,
                          cfg.train.valid_max_groups, cfg.train.seed)
    log.info("validation: %d (user, category) groups in %d target categories", vs.groups, len(vs.category_items))
    return vs
