"""Transfer protocol: pretrain on source categories, fit target heads, optionally fine-tune.

``pretrain``: shared parameters + source heads train on source-category examples;
``freeze``: shared parameters frozen, target heads train on target-category examples;
``finetune``: everything trains on both, shared parameters at ``lr * shared_lr_scale``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from xrec_spark.config import TransferPhase
from xrec_spark.model.inputs import check_category
from xrec_spark.model.losses import MultiTaskLoss
from xrec_spark.model.towers import CrossCategoryModel

if TYPE_CHECKING:
    import pandas

# The phase names as plain text, in TransferPhase order (the config is the one list of them).
PHASES: tuple[str, ...] = tuple(phase.value for phase in TransferPhase)
TRANSFER_COLUMNS = ("src_category_idx", "dst_category_idx", "lift", "users_both")


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"transfer phase {phase!r} is not one of {PHASES} (train.phases[].name)")


def choose_sources(transfer: "pandas.DataFrame", targets: Sequence[int], top_n: int) -> dict[int, list[int]]:
    """Top-``top_n`` source categories for each target, by lift (then users_both, then index).

    ``transfer``: rows of silver.category_transfer (src_category_idx, dst_category_idx, lift,
    users_both, ...). A category is never its own source; pairs with no shared users
    (users_both = 0) are skipped. Returns ``{target: [source, ...]}`` (empty when none).
    """
    missing = [c for c in TRANSFER_COLUMNS if c not in transfer.columns]
    if missing:
        raise ValueError(f"silver.category_transfer frame lacks columns {missing}; got {list(transfer.columns)}")
    if top_n < 1:
        raise ValueError(f"train.source_top_n must be >= 1, got {top_n}")
    rows = transfer[(transfer["src_category_idx"] != transfer["dst_category_idx"]) & (transfer["users_both"] > 0)]
    rows = rows.sort_values(["dst_category_idx", "lift", "users_both", "src_category_idx"],
                            ascending=[True, False, False, True])
    out: dict[int, list[int]] = {}
    for target in targets:
        chosen = rows.loc[rows["dst_category_idx"] == int(target), "src_category_idx"].head(top_n)
        out[int(target)] = [int(x) for x in chosen.tolist()]
    return out


def phase_categories(phase: str, sources: Iterable[int], targets: Iterable[int]) -> set[int]:
    """Categories whose examples train in ``phase``: sources, targets, or both (finetune)."""
    _check_phase(phase)
    src, dst = {int(k) for k in sources}, {int(k) for k in targets}
    return src if phase == "pretrain" else dst if phase == "freeze" else src | dst


def phase_param_groups(model: CrossCategoryModel, loss: MultiTaskLoss, phase: str, lr: float,
                       shared_lr_scale: float, source_categories: Sequence[int],
                       target_categories: Sequence[int]) -> list[dict]:
    """Set ``requires_grad`` for ``phase`` and return optimizer param groups.

    pretrain: shared parameters (lr × shared_lr_scale) + source heads (lr); freeze: target heads
    only (lr); finetune: shared (lr × shared_lr_scale) + source and target heads (lr). The loss's
    per-category parameters (uncertainty weighting) follow their category's head. Every other
    parameter gets ``requires_grad=False``. Groups carry a ``name`` key (shared / heads).
    """
    _check_phase(phase)
    if not isinstance(model, CrossCategoryModel):
        raise TypeError(f"phase_param_groups needs a CrossCategoryModel (unwrap DDP's .module), "
                        f"got {type(model).__name__}")
    if lr <= 0 or shared_lr_scale < 0:
        raise ValueError(f"phase {phase}: lr must be > 0 and shared_lr_scale >= 0, got {lr}, {shared_lr_scale}")
    for k in [*source_categories, *target_categories]:
        check_category(int(k), model.sizes.n_categories)
    categories = sorted(phase_categories(phase, source_categories, target_categories))
    heads = model.head_parameters(categories) + [p for k in categories for p in loss.category_parameters(k)]
    shared = [] if phase == "freeze" else model.shared_parameters()
    model.requires_grad_(False)
    loss.requires_grad_(False)
    for p in [*heads, *shared]:
        p.requires_grad_(True)
    groups = [{"name": "shared", "params": shared, "lr": lr * shared_lr_scale},
              {"name": "heads", "params": heads, "lr": lr}]
    return [g for g in groups if g["params"]]


@torch.no_grad()
def init_new_category_head(model: CrossCategoryModel, new_category: int, neighbours: Sequence[int]) -> None:
    """Initialise category ``new_category``'s parameters as the mean of its neighbours'.

    Averages θ_k (and gates / own towers when the model has them), the item tower's
    category-embedding row and, with a category-attention history encoder, its target-query
    row over ``neighbours``. A ``new_category`` one above the model's count is appended first
    (``model.sizes`` grows; rebuild optimizers and the loss afterwards).
    """
    n = model.sizes.n_categories
    if new_category == n + 1:
        model.add_category()
    elif not 1 <= new_category <= n:
        raise ValueError(f"new_category {new_category} must be in 1..{n} or {n + 1} (append one category)")
    sources = [int(k) for k in neighbours if int(k) != new_category]
    if not sources:
        raise ValueError(f"init_new_category_head({new_category}): give at least one neighbour category "
                         f"other than itself, got {list(neighbours)}")
    for k in sources:
        check_category(k, model.sizes.n_categories)
    target = model.category_parameters(new_category)
    per_source = [model.category_parameters(k) for k in sources]
    for i, param in enumerate(target):
        param.copy_(torch.stack([params[i] for params in per_source]).mean(0))
    rows = model.item_tower.category.weight
    rows[new_category] = rows[sources].mean(0)
    encoder = model.user_tower.history if model.user_tower is not None else None
    if encoder is not None and encoder.targeted:
        # The query attends over a user's history for this category: start from where the
        # neighbours look rather than from mean pooling.
        encoder.category_query[new_category] = encoder.category_query[sources].mean(0)
