"""MultiTaskLoss: per-category BCE and sampled softmax with logQ, and the task weightings."""

from __future__ import annotations

import math

import pytest
import torch

from model_synthetic import tiny_config
from xrec_spark.model.losses import MultiTaskLoss

LN2, LN43 = math.log(2.0), math.log(4.0 / 3.0)


def _bce_case():
    # Scores <u, v>: rows 0-1 score 0 (BCE = ln 2 whatever the label); row 2 scores ln 3 with
    # label 1 (BCE = ln(4/3)). Category 1: rows 0 (w 1) and 1 (w 3) -> L1 = ln 2; category 2: L2 = ln(4/3).
    u = torch.tensor([[0.0, 0.0], [1.0, 0.0], [math.log(3.0), 0.0]], requires_grad=True)
    v = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 5.0]])
    batch = {"category_idx": torch.tensor([1, 1, 2]), "label": torch.tensor([1.0, 0.0, 1.0]),
             "weight": torch.tensor([1.0, 3.0, 1.0]), "item_idx": torch.tensor([1, 2, 3])}
    return u, v, batch


@pytest.mark.parametrize("weighting, sizes, expected", [
    ("uniform", None, (LN2 + LN43) / 2),
    ("size", [1, 3], (1 * LN2 + 3 * LN43) / 4),
    ("size", [0, 1, 3, 7], (1 * LN2 + 3 * LN43) / 4),   # indexed by category_idx (0 ignored); 3 absent
    ("uncertainty", None, (LN2 + LN43) / 2),             # log-variances start at 0
])
def test_bce_per_category_and_weightings(weighting, sizes, expected):
    n_categories = 3 if sizes is not None and len(sizes) == 4 else 2
    loss = MultiTaskLoss(tiny_config(task_weighting=weighting), n_categories, sizes)
    u, v, batch = _bce_case()
    total, per_k = loss(u, v, batch)
    assert per_k == pytest.approx({1: LN2, 2: LN43})
    assert float(total.detach()) == pytest.approx(expected)
    total.backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    if weighting == "uncertainty":
        grads = {k: float(p.grad) for k, p in loss.log_vars.items()}
        # d/ds [exp(-s) L + s] / 2 at s = 0 is (1 - L) / 2.
        assert grads == pytest.approx({"1": (1 - LN2) / 2, "2": (1 - LN43) / 2})


def test_sampled_softmax_in_batch_negatives_with_logq():
    # Positives rows 0, 1, 3 in category 1 and row 4 in category 2; row 2 is a negative (ignored).
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [1.0, 1.0], [2.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [9.0, 9.0], [1.0, 1.0], [1.0, 0.0]])
    batch = {"category_idx": torch.tensor([1, 1, 1, 1, 2]), "label": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]),
             "weight": torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0]), "item_idx": torch.tensor([1, 2, 3, 4, 5])}
    log_pop = torch.tensor([0.0, 0.0, math.log(2.0), 0.0, math.log(3.0), 0.0])
    loss = MultiTaskLoss(tiny_config(loss="sampled_softmax", temperature=1.0), 2)
    total, per_k = loss(u, v, batch, log_pop)

    def ce(logits: list[float], target: int) -> float:
        return -logits[target] + math.log(sum(math.exp(x) for x in logits))

    # Category-1 positives (rows 0, 1, 3 -> items 1, 2, 4): logits u_i . v_j - logQ_j, logQ = (0, ln 2, ln 3).
    ln2, ln3 = math.log(2.0), math.log(3.0)
    row0 = ce([1, 0 - ln2, 1 - ln3], 0)
    row1 = ce([0, 2 - ln2, 1 - ln3], 1)
    row3 = ce([1, 2 - ln2, 2 - ln3], 2)
    expected_1 = (row0 + row1 + 2 * row3) / 4
    assert per_k[1] == pytest.approx(expected_1, rel=1e-6)
    assert per_k[2] == pytest.approx(0.0, abs=1e-7)  # a lone positive has no in-batch negative
    assert float(total.detach()) == pytest.approx((expected_1 + 0.0) / 2, rel=1e-6)


def test_sampled_softmax_masks_duplicate_items_and_handles_new_items():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    batch = {"category_idx": torch.tensor([1, 1, 1]), "label": torch.ones(3), "weight": torch.ones(3),
             "item_idx": torch.tensor([7, 7, 40])}  # item 40 is beyond the popularity table: logQ 0
    loss = MultiTaskLoss(tiny_config(loss="sampled_softmax", temperature=1.0), 1)
    _, per_k = loss(u, v, batch, torch.zeros(10))

    def ce(logits: list[float], target: int) -> float:
        return -logits[target] + math.log(sum(math.exp(x) for x in logits))

    # Row 0 and row 1 share item 7: each sees only itself and item 40 as candidates.
    expected = (ce([1.0, 0.0], 0) + ce([0.0, 3.0], 0) + ce([1.0, 1.0, 3.0], 2)) / 3
    assert per_k[1] == pytest.approx(expected, rel=1e-6)


def test_no_positive_rows_gives_zero_loss_that_still_backpropagates():
    u = torch.ones(2, 2, requires_grad=True)
    batch = {"category_idx": torch.tensor([1, 1]), "label": torch.zeros(2), "item_idx": torch.tensor([1, 2])}
    total, per_k = MultiTaskLoss(tiny_config(loss="sampled_softmax"), 1)(u, torch.ones(2, 2), batch)
    assert per_k == {} and float(total.detach()) == 0.0
    total.backward()
    assert torch.equal(u.grad, torch.zeros(2, 2))


@pytest.mark.parametrize("sizes, match", [
    (None, "task_weighting=size needs category_sizes"),
    ([1, 2, 3, 4], "category_sizes has 4 entries; expected 2"),
    ([1, -2], "must be >= 0"),
])
def test_size_weighting_needs_valid_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        MultiTaskLoss(tiny_config(task_weighting="size"), 2, sizes)


def test_category_outside_the_loss_is_refused():
    u, v, batch = _bce_case()
    with pytest.raises(ValueError, match="outside 1..1"):
        MultiTaskLoss(tiny_config(), 1)(u, v, batch)
