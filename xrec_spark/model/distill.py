"""Distillation of a trained teacher into a smaller student two-tower for cheap candidate generation.

The student is a :class:`CrossCategoryModel` with a small configuration (``model.student_dim``,
mean-pooled history, shared MLP bottom), so it exports user and item vectors through the same
API as the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from xrec_spark.config import BottomKind, HistoryEncoderKind, InitFrom
from xrec_spark.model.content import ItemContent
from xrec_spark.model.towers import CrossCategoryModel


@dataclass
class DistillResult:
    """Steps taken and the loss of each step (pointwise MSE + in-batch listwise KL)."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)


def make_student(teacher: CrossCategoryModel, content: ItemContent | None = None) -> CrossCategoryModel:
    """A small student for ``teacher``: same sizes, content and encoders' kinds, ``student_dim`` wide."""
    cfg = teacher.cfg
    dim = cfg.student_dim
    student_cfg = cfg.model_copy(update={
        "embedding_dim": dim, "hidden_dim": 2 * dim, "bottom": BottomKind.SHARED,
        "history_encoder": (HistoryEncoderKind.NONE if cfg.history_encoder is HistoryEncoderKind.NONE
                            else HistoryEncoderKind.MEAN),
        "history_item_rows": False, "init_from": InitFrom.NONE,
        # The teacher's soft scores are the regulariser; the student reads the same full
        # history the teacher scored with.
        "history_item_dropout": 0.0, "history_dropout": 0.0,
        "distill": False})  # hash_buckets stays: the content's token ids were hashed with it
    if content is None:
        tower = teacher.item_tower
        content = ItemContent(tower.content_tokens.cpu(), tower.content_category.cpu(),
                              tower.content_log_popularity.cpu(),
                              None if tower.content_image is None else tower.content_image.cpu(),
                              None if tower.content_text_vector is None else tower.content_text_vector.cpu())
    device = teacher.item_tower.ids.weight.device
    return CrossCategoryModel(student_cfg, teacher.sizes, content).to(device)


def distillation_loss(student_u: Tensor, student_v: Tensor, teacher_u: Tensor, teacher_v: Tensor,
                      category_idx: Tensor, temperature: float = 1.0, pool: "Pool | None" = None,
                      pointwise_weight: float = 1.0) -> Tensor:
    """MSE of the examples' scores plus KL(teacher || student) of each user's scores over the
    items of their example's category.

    Vectors ``[B, D_*]`` of the examples' users and items, category_idx ``[B]``. The listwise
    term teaches the student the teacher's ranking within the category, which is what retrieval
    needs; its items are the batch's own (``[B]``) and, with ``pool``, items drawn from the
    categories of the batch. The softmax is at ``temperature`` (the teacher's training one).
    """
    pointwise = F.mse_loss((student_u * student_v).sum(-1), (teacher_u * teacher_v).sum(-1))
    s_items, t_items, item_category = student_v, teacher_v, category_idx
    if pool is not None:
        s_items = torch.cat([student_v, pool.student], dim=0)
        t_items = torch.cat([teacher_v, pool.teacher], dim=0)
        item_category = torch.cat([category_idx, pool.category], dim=0)
    listwise = student_u.new_zeros(())
    # One block per category (users of k x items of k), not a masked [B, B + P] matrix: the
    # work is the sum of the blocks, a fraction of the full matrix when the batch spans many.
    for k in torch.unique(category_idx):
        rows, cols = category_idx == k, item_category == k
        s_logits = student_u[rows] @ s_items[cols].T / temperature
        t_logits = teacher_u[rows] @ t_items[cols].T / temperature
        listwise = listwise + F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                                       reduction="sum")
    return pointwise_weight * pointwise + listwise / category_idx.shape[0]


@dataclass(frozen=True)
class Pool:
    """Items drawn from the batch's categories, as both models see them: student ``[P, d]``,
    teacher ``[P, D]`` vectors and their category ``[P]``."""

    student: Tensor
    teacher: Tensor
    category: Tensor


def distill(teacher: CrossCategoryModel, student: CrossCategoryModel, batches: Iterable[Mapping[str, Tensor]],
            *, lr: float = 3e-3, temperature: float = 1.0,
            optimizer: torch.optim.Optimizer | None = None) -> DistillResult:
    """Train ``student`` on ``teacher``'s scores over ``batches`` (one pass); the teacher is frozen.

    Each batch: user_idx, history, item_idx, category_idx (see CrossCategoryModel.encode). The
    teacher runs in eval mode under ``no_grad``; the student trains (id-dropout on).
    """
    if lr <= 0 or temperature <= 0:
        raise ValueError(f"distill: lr and temperature must be > 0, got {lr}, {temperature}")
    opt = optimizer or torch.optim.Adam(student.parameters(), lr=lr)
    was_training = teacher.training
    teacher.eval()
    student.train()
    result = DistillResult()
    try:
        for batch in batches:
            with torch.no_grad():
                t_u, t_v = teacher.encode(batch)
            s_u, s_v = student.encode(batch)
            loss = distillation_loss(s_u, s_v, t_u, t_v, batch["category_idx"], temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps += 1
            result.losses.append(float(loss.detach()))
    finally:
        teacher.train(was_training)
    return result
