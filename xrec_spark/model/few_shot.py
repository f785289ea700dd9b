"""Few-shot adaptation: a trained model learns a category, or items, added after its training.

The general model (every shared parameter trained on all the other categories) stays as it
is; the new category k gets its head θ_k initialised from its nearest trained categories
(:func:`xrec_spark.model.transfer.init_new_category_head`), then a bounded number of steps on
the few examples k has fit **only** k's own parameters: θ_k and the rows of k in the tables
indexed by category (the item tower's category embedding, the unseen-item bias prior, the
history encoder's target query). Every other parameter is left bit-identical: the rows of
other categories in those shared tables get a zero gradient, and Adam without weight decay
moves a parameter by exactly zero when its gradient has always been zero.

Items with train positives that had none when the model trained (added since, or present
without positives) are scored, without adaptation, from their content, popularity and category
row. :func:`add_items` grows the item tables to cover them and :func:`start_item_rows` gives
them what the model knows without their events: a zero id row and the bias the trained items'
counts predict (a line fitted to their learned bias against log(1 + train count)); the
fine-tune then fits **only** those rows on their events, within the category's softmax, so
the rows are pushed up by their own positives and down by the other items' (see
:func:`fine_tune_new_rows`). Pure torch; the nightly's Spark side is
:mod:`xrec_spark.pipeline.few_shot`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from xrec_spark.config import LossKind
from xrec_spark.model.losses import Catalogue, MultiTaskLoss
from xrec_spark.model.towers import CrossCategoryModel
from xrec_spark.model.transfer import init_new_category_head

EXAMPLE_COLUMNS = ("user_idx", "history", "item_idx", "category_idx", "label", "weight")


@dataclass(frozen=True)
class FewShotSettings:
    """How long and how fast the new heads fit: ``steps`` batches of ``batch_size`` examples
    (cycling over the examples, reshuffled each pass with ``seed``) at Adam learning rate
    ``lr``, gradients clipped to norm ``grad_clip``."""

    steps: int = 50
    lr: float = 0.01
    batch_size: int = 256
    seed: int = 0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"FewShotSettings: steps >= 0, batch_size >= 1, lr > 0 and grad_clip > 0 needed; got "
                             f"steps={self.steps}, batch_size={self.batch_size}, lr={self.lr}, "
                             f"grad_clip={self.grad_clip}")


@dataclass(frozen=True)
class FewShotResult:
    """What a fine-tune did: steps run, examples it had, mean loss of its first and last pass
    (NaN without steps), seconds."""

    steps: int
    examples: int
    first_loss: float
    final_loss: float
    seconds: float


def add_categories(model: CrossCategoryModel, neighbours: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """Append the categories of ``neighbours`` (in index order, each one above the model's
    count) with heads initialised as the mean of their neighbours' heads.

    ``neighbours``: ``{new category_idx: [trained category_idx, ...]}``, e.g. from
    :func:`xrec_spark.model.transfer.choose_sources`. A category without neighbours (no shared
    users in silver.category_transfer yet) starts from the mean of every trained category.
    Returns the neighbours used per new category.
    """
    trained = model.sizes.n_categories
    used: dict[int, list[int]] = {}
    for k in sorted(neighbours):
        if k != model.sizes.n_categories + 1:
            raise ValueError(f"new categories must follow the model's {model.sizes.n_categories} in order; "
                             f"got {sorted(neighbours)}")
        chosen = [int(s) for s in neighbours[k] if 1 <= int(s) <= trained]
        used[k] = chosen or list(range(1, trained + 1))
        init_new_category_head(model, k, used[k])
    return used


def _category_rows(model: CrossCategoryModel) -> list[nn.Parameter]:
    """Parameters shared by all categories whose row k belongs to category k alone."""
    tower = model.item_tower
    tables: list[nn.Parameter] = [tower.category.weight]
    if tower.unseen_bias is not None:
        tables.append(tower.unseen_bias.weight)
    encoder = model.user_tower.history if model.user_tower is not None else None
    if encoder is not None and encoder.targeted:
        tables.append(encoder.category_query)
    return tables


def _item_rows(model: CrossCategoryModel) -> list[nn.Parameter]:
    """Tables whose row i belongs to item i alone: id rows, bias, the history's own item rows."""
    tower = model.item_tower
    tables = [tower.ids.weight, *([] if tower.bias is None else [tower.bias.weight])]
    return tables + ([] if model.history_rows is None else [model.history_rows.weight])


def _grown(table: nn.Embedding, rows: int) -> nn.Embedding:
    """``table`` with ``rows`` rows, the added ones zero. Dense gradients: the few-shot Adam
    takes no sparse ones, and the flag shapes only training's gradients, not the saved state."""
    out = nn.Embedding(rows, table.embedding_dim, padding_idx=table.padding_idx).to(table.weight.device)
    with torch.no_grad():
        out.weight.zero_()
        out.weight[: table.num_embeddings] = table.weight
    return out


def add_items(model: CrossCategoryModel, n_items: int) -> None:
    """Grow the item tables (id rows, bias, history rows) to items ``1..n_items`` (>= the
    model's count), the new rows zero; the item content must already cover them
    (:func:`xrec_spark.model.checkpoint.load_model_on_items` loads it so)."""
    tower = model.item_tower
    if n_items < model.sizes.n_items or tower.content_rows <= n_items:
        raise ValueError(f"add_items: n_items must be >= the model's {model.sizes.n_items} and below the item "
                         f"content's {tower.content_rows} rows; got {n_items}")
    tower.ids = _grown(tower.ids, n_items + 1)
    if tower.bias is not None:
        tower.bias = _grown(tower.bias, n_items + 1)
    if model.history_rows is not None:
        model.history_rows = _grown(model.history_rows, n_items + 1)
    model.sizes = replace(model.sizes, n_items=n_items)


@torch.no_grad()
def start_item_rows(model: CrossCategoryModel, items: Sequence[int]) -> None:
    """Give ``items`` (within the model's tables) what the model knows without their events: a
    zero id (and history) row, and the bias that the other counted items' learned bias predicts
    from log(1 + train count) by least squares (the untrained prior's log(1 + count) itself
    when fewer than two items have counts)."""
    rows = torch.as_tensor([int(i) for i in items], dtype=torch.long)
    if rows.numel() == 0:
        return
    tower = model.item_tower
    for table in (tower.ids, model.history_rows):
        if table is not None:
            table.weight[rows.to(table.weight.device)] = 0
    if tower.bias is None:
        return
    bias = tower.bias.weight
    log_pop = tower.content_log_popularity[: bias.shape[0]].to(bias.dtype)
    known = log_pop > 0
    known[rows.to(known.device)] = False
    slope, intercept = 1.0, 0.0
    if int(known.sum()) >= 2:
        x, y = log_pop[known], bias[known, 0]
        design = torch.stack([x, torch.ones_like(x)], 1)
        slope, intercept = (float(v) for v in torch.linalg.lstsq(design, y.unsqueeze(1)).solution[:, 0])
    bias[rows.to(bias.device), 0] = slope * log_pop[rows.to(log_pop.device)] + intercept


def new_row_parameters(model: CrossCategoryModel, categories: Sequence[int],
                       items: Sequence[int] = ()) -> list[nn.Parameter]:
    """The parameters a few-shot fine-tune updates: the heads of ``categories`` (θ_k, gates,
    own towers) and the tables whose rows of ``categories`` or ``items`` it may change (see
    module docstring)."""
    out = [*model.head_parameters(categories), *_category_rows(model)] if len(categories) else []
    return out + (_item_rows(model) if len(items) else [])


def _row_mask(table: nn.Parameter, rows: Sequence[int]) -> Tensor:
    mask = torch.zeros(table.shape[0], *([1] * (table.dim() - 1)), dtype=table.dtype, device=table.device)
    mask[torch.as_tensor([int(r) for r in rows], dtype=torch.long, device=table.device)] = 1
    return mask


@contextmanager
def only_new_rows_train(model: CrossCategoryModel, categories: Sequence[int],
                        items: Sequence[int] = ()) -> Iterator[list[nn.Parameter]]:
    """Within the block only the parameters of ``categories`` and ``items`` require gradients,
    and the shared per-category and per-item tables pass gradient to those rows only; yields
    the parameters to optimise. Restores ``requires_grad`` and removes the masks on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    hooks = []
    try:
        model.requires_grad_(False)
        params = new_row_parameters(model, categories, items)
        for p in params:
            p.requires_grad_(True)
        masked = [(t, categories) for t in _category_rows(model)] if len(categories) else []
        masked += [(t, items) for t in _item_rows(model)] if len(items) else []
        for table, rows in masked:
            hooks.append(table.register_hook(lambda grad, mask=_row_mask(table, rows): grad * mask))
        yield params
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


def _objective(model: CrossCategoryModel) -> tuple[MultiTaskLoss, Tensor | None, Catalogue | None]:
    """The model's own training loss, with what its kind needs (as the trainer builds it)."""
    content = model.item_tower
    loss = MultiTaskLoss(model.cfg, model.sizes.n_categories).to(content.ids.weight.device)
    log_pop = content.content_log_popularity if model.cfg.loss is LossKind.SAMPLED_SOFTMAX else None
    catalogue = (Catalogue(content.content_category.cpu(), torch.expm1(content.content_log_popularity.cpu()).round(),
                           model.cfg.seed + 7) if model.cfg.loss is LossKind.SOFTMAX else None)
    return loss, log_pop, catalogue


def _order(n: int, steps: int, batch_size: int, seed: int) -> Tensor:
    """Row indices for ``steps`` batches: passes over ``n`` rows, each in a fresh random order."""
    generator = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    passes = -(-needed // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])[:needed]


def fine_tune_new_rows(model: CrossCategoryModel, examples: Mapping[str, Tensor], settings: FewShotSettings,
                       categories: Sequence[int] = (), items: Sequence[int] = ()) -> FewShotResult:
    """Fit the parameters of ``categories`` and the rows of ``items`` (see
    :func:`new_row_parameters`) on ``examples``.

    ``examples``: rows of silver.training_examples as tensors — user_idx, item_idx,
    category_idx long ``[N]``, history long ``[N, L]``, label and weight float ``[N]`` — in
    ``categories`` or in the categories of ``items`` (rows of other items there are the
    context that pushes the new rows down as the softmax's negatives; weight them by the
    inverse of their sampling rate). Runs on the model's device in eval mode: the frozen towers
    then give the same inputs the served model gives (no id or history dropout), which is what
    the new rows have to fit. One process: a few thousand examples take seconds, less than
    starting DDP ranks.
    """
    missing = [c for c in EXAMPLE_COLUMNS if c not in examples]
    if missing:
        raise ValueError(f"few-shot examples lack columns {missing}; got {sorted(examples)}")
    cats = torch.as_tensor(examples["category_idx"])
    item_rows = torch.as_tensor([int(i) for i in items], dtype=torch.long)
    allowed = {int(k) for k in categories} | set(model.item_tower.content_category.cpu()[item_rows].tolist())
    stray = sorted(set(cats.unique().tolist()) - allowed)
    if stray:
        raise ValueError(f"few-shot examples hold categories {stray} outside the adapted {sorted(allowed)}")
    n, started = int(cats.shape[0]), time.perf_counter()
    if n == 0 or settings.steps == 0:
        return FewShotResult(0, n, float("nan"), float("nan"), time.perf_counter() - started)
    device = model.item_tower.ids.weight.device
    data = {name: torch.as_tensor(examples[name]).to(device) for name in EXAMPLE_COLUMNS}
    loss_fn, log_pop, catalogue = _objective(model)
    order = _order(n, settings.steps, settings.batch_size, settings.seed).to(device)
    per_pass = max(1, -(-n // settings.batch_size))
    losses: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with only_new_rows_train(model, categories, items) as params:
            optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=0.0)
            for step in range(settings.steps):
                rows = order[step * settings.batch_size:(step + 1) * settings.batch_size]
                batch = {name: t[rows] for name, t in data.items()}
                optimizer.zero_grad(set_to_none=True)
                u, v = model.encode(batch)
                total, _ = loss_fn(u, v, batch, log_pop, catalogue, model.item_vectors)
                total.backward()
                nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], settings.grad_clip)
                optimizer.step()
                losses.append(float(total.detach()))
    finally:
        model.train(was_training)
    first, last = losses[:per_pass], losses[-per_pass:]
    return FewShotResult(settings.steps, n, sum(first) / len(first), sum(last) / len(last),
                         time.perf_counter() - started)
