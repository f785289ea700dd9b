"""Distillation of a trained teacher into a small student two-tower."""

from __future__ import annotations

import pytest
import torch

from model_synthetic import planted_taste, train_model
from xrec_spark.config import ModelConfig
from xrec_spark.model.distill import distill, make_student


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho: the correlation of the scores' ranks (what retrieval keeps)."""
    return _correlation(torch.argsort(torch.argsort(a)).double(), torch.argsort(torch.argsort(b)).double())


def test_student_learns_the_teachers_scores(one_thread):
    data = planted_taste(n_users=300, seed=3)
    cfg = ModelConfig(embedding_dim=32, hidden_dim=64, hash_buckets=1024, max_tokens=8, bottom="mmoe",
                      history_encoder="attention", student_dim=8)
    teacher = train_model(data, cfg, epochs=2)
    student = make_student(teacher)
    assert student.cfg.embedding_dim == 8 and student.cfg.history_encoder.value == "mean"
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 3

    n = data.examples["label"].shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    held = {k: v[order[:2000]] for k, v in data.examples.items()}
    train = order[2000:]
    with torch.no_grad():
        target = teacher(held)
        start = student.eval()(held)
        before, mse_before = _correlation(start, target), float(((start - target) ** 2).mean())
    batches = [{k: v[train[i:i + 256]] for k, v in data.examples.items()} for i in range(0, len(train), 256)]
    result = distill(teacher, student, batches * 2, lr=1e-2)
    with torch.no_grad():
        end = student.eval()(held)
        after, mse_after = _correlation(end, target), float(((end - target) ** 2).mean())
    print(f"\ndistillation: {result.steps} steps, loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}, "
          f"held-out correlation with teacher {before:.3f} -> {after:.3f}, MSE {mse_before:.3f} -> {mse_after:.3f}")
    assert result.steps == 2 * len(batches) and not teacher.training
    assert after > 0.9 and after > before
    assert _rank_correlation(end, target) > 0.85   # the held-out pairs keep the teacher's order
    assert mse_after < 0.25 * mse_before
    assert result.losses[-1] < result.losses[0]
