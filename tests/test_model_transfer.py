"""Transfer protocol: source choice, per-phase trainable parameters, new-category heads."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from model_synthetic import TINY_SIZES, tiny_batch, tiny_model
from xrec_spark.model.losses import MultiTaskLoss
from xrec_spark.model.transfer import (PHASES, choose_sources, init_new_category_head, phase_categories,
                                       phase_param_groups)


def _transfer_rows() -> pd.DataFrame:
    rows = [  # src, dst, users_both, lift
        (1, 3, 10, 2.0), (2, 3, 40, 3.5), (4, 3, 5, 3.5), (3, 3, 99, 9.0), (5, 3, 0, 8.0),
        (3, 1, 10, 1.2), (2, 1, 7, 0.4), (4, 1, 1, 0.9),
    ]
    frame = pd.DataFrame(rows, columns=["src_category_idx", "dst_category_idx", "users_both", "lift"])
    return frame.assign(p_dst_given_src=0.1, score=0.2)


def test_choose_sources_by_lift_without_self_or_empty_pairs():
    got = choose_sources(_transfer_rows(), targets=[3, 1, 6], top_n=2)
    # Target 3: lift 3.5 tie between 2 (40 users) and 4 (5 users) -> 2 first; 3 is itself, 5 has no users.
    assert got == {3: [2, 4], 1: [3, 4], 6: []}
    assert choose_sources(_transfer_rows(), [3], top_n=5) == {3: [2, 4, 1]}


def test_choose_sources_rejects_bad_input():
    with pytest.raises(ValueError, match=r"lacks columns \['lift'\]"):
        choose_sources(_transfer_rows().drop(columns=["lift"]), [1], 2)
    with pytest.raises(ValueError, match="source_top_n must be >= 1"):
        choose_sources(_transfer_rows(), [1], 0)


def test_phase_categories():
    assert phase_categories("pretrain", [1, 2], [3]) == {1, 2}
    assert phase_categories("freeze", [1, 2], [3]) == {3}
    assert phase_categories("finetune", [1, 2], [3]) == {1, 2, 3}
    with pytest.raises(ValueError, match="'warmup' is not one of"):
        phase_categories("warmup", [1], [2])


@pytest.mark.parametrize("share, bottom, weighting", [
    (True, "shared", "uniform"), (True, "mmoe", "uncertainty"), (False, "mmoe", "uncertainty")])
@pytest.mark.parametrize("phase", PHASES)
def test_gradients_reach_exactly_the_unfrozen_parameters(phase, share, bottom, weighting):
    model = tiny_model(share_across_categories=share, bottom=bottom, task_weighting=weighting)
    loss_fn = MultiTaskLoss(model.cfg, TINY_SIZES.n_categories)
    sources, targets = [1, 2], [3]
    groups = phase_param_groups(model, loss_fn, phase, lr=0.01, shared_lr_scale=0.1,
                                source_categories=sources, target_categories=targets)
    trainable = {id(p) for g in groups for p in g["params"]}
    assert trainable == {id(p) for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad}
    expected = {id(p) for p in model.head_parameters(phase_categories(phase, sources, targets))}
    if phase != "freeze":
        expected |= {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected

    batch = tiny_batch()
    keep = torch.isin(batch["category_idx"], torch.tensor(sorted(phase_categories(phase, sources, targets))))
    batch = {k: v[keep] for k, v in batch.items()}
    u, v = model.encode(batch)
    total, _ = loss_fn(u, v, batch)
    total.backward()
    with_grad = {id(p) for p in [*model.parameters(), *loss_fn.parameters()]
                 if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable

    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == ({"heads": 0.01} if phase == "freeze" else {"shared": 0.01 * 0.1, "heads": 0.01})


def test_freeze_phase_step_leaves_shared_parameters_unchanged():
    model = tiny_model()
    loss_fn = MultiTaskLoss(model.cfg, 3)
    opt = torch.optim.Adam(phase_param_groups(model, loss_fn, "freeze", 0.05, 1.0, [1, 2], [3]))
    before = [p.detach().clone() for p in model.shared_parameters()]
    head_before = [p.detach().clone() for p in model.head_parameters([3])]
    batch = {k: v[[2, 5]] for k, v in tiny_batch().items()}  # category 3 rows
    total, _ = loss_fn(*model.encode(batch), batch)
    total.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.shared_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(head_before, model.head_parameters([3])))


def test_phase_param_groups_rejects_bad_arguments():
    model = tiny_model()
    loss_fn = MultiTaskLoss(model.cfg, 3)
    with pytest.raises(ValueError, match="category_idx 4 outside 1..3"):
        phase_param_groups(model, loss_fn, "pretrain", 0.1, 1.0, [1, 4], [3])
    with pytest.raises(TypeError, match="unwrap DDP"):
        phase_param_groups(torch.nn.Linear(2, 2), loss_fn, "pretrain", 0.1, 1.0, [1], [3])  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [True, False])
def test_init_new_category_head_averages_neighbours(share):
    model = tiny_model(share_across_categories=share, bottom="mmoe")
    init_new_category_head(model, 3, [1, 2])
    for a, b, c in zip(model.category_parameters(1), model.category_parameters(2), model.category_parameters(3)):
        assert torch.allclose(c, (a + b) / 2)
    rows = model.item_tower.category.weight
    assert torch.allclose(rows[3], (rows[1] + rows[2]) / 2)


def test_new_category_is_appended_and_trainable():
    model = tiny_model()
    init_new_category_head(model, 4, [1, 3])
    assert model.sizes.n_categories == 4 and model.item_tower.category.num_embeddings == 5
    for a, b, c in zip(model.category_parameters(1), model.category_parameters(3), model.category_parameters(4)):
        assert torch.allclose(c, (a + b) / 2)
    batch = {**tiny_batch(), "category_idx": torch.tensor([4, 4, 1, 2, 3, 4])}
    loss_fn = MultiTaskLoss(model.cfg, model.sizes.n_categories)
    opt = torch.optim.Adam(phase_param_groups(model, loss_fn, "freeze", 0.05, 1.0, [1, 3], [4]))
    total, per_k = loss_fn(*model.encode(batch), batch)
    total.backward()
    opt.step()
    assert set(per_k) == {1, 2, 3, 4}
    assert all(p.grad is not None for p in model.category_parameters(4))


@pytest.mark.parametrize("new, neighbours, match", [
    (6, [1], r"new_category 6 must be in 1..3 or 4"),
    (2, [2], "at least one neighbour category other than itself"),
    (2, [1, 9], "category_idx 9 outside 1..3"),
])
def test_init_new_category_head_rejects_bad_arguments(new, neighbours, match):
    with pytest.raises(ValueError, match=match):
        init_new_category_head(tiny_model(), new, neighbours)



# ------------------------------------------------------------------ few-shot adaptation


def _set_heads(model, values: dict[int, float]) -> None:
    with torch.no_grad():
        for k, value in values.items():
            for p in model.category_parameters(k):
                p.fill_(value)
            model.item_tower.category.weight[k].fill_(10 * value)


def test_few_shot_head_starts_from_the_nearest_heads():
    from xrec_spark.model.few_shot import add_categories

    # Transfer into the new category 4: lift 3.0 from 3, 2.0 from 1, 0.5 from 2 -> nearest two: 3, 1.
    rows = pd.DataFrame([(3, 4, 8, 3.0), (1, 4, 5, 2.0), (2, 4, 9, 0.5)],
                        columns=["src_category_idx", "dst_category_idx", "users_both", "lift"])
    model = tiny_model(bottom="mmoe")
    _set_heads(model, {1: 1.0, 2: 2.0, 3: 6.0})
    used = add_categories(model, choose_sources(rows, [4], top_n=2))
    assert used == {4: [3, 1]} and model.sizes.n_categories == 4
    assert all(torch.all(p == 3.5) for p in model.category_parameters(4))       # (6 + 1) / 2
    assert torch.all(model.item_tower.category.weight[4] == 35.0)

    # No transfer evidence yet: the mean of every trained head, (1 + 2 + 6) / 3.
    bare = tiny_model(bottom="mmoe")
    _set_heads(bare, {1: 1.0, 2: 2.0, 3: 6.0})
    assert add_categories(bare, {4: []}) == {4: [1, 2, 3]}
    assert all(torch.all(p == 3.0) for p in bare.category_parameters(4))
    with pytest.raises(ValueError, match="must follow the model's 3 in order"):
        add_categories(tiny_model(), {5: [1]})


def _new_category_examples(n: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"user_idx": torch.randint(0, 7, (n,), generator=g),
            "history": torch.randint(0, 9, (n, 4), generator=g),
            "item_idx": torch.randint(1, 9, (n,), generator=g),
            "category_idx": torch.full((n,), 4),
            "label": (torch.rand(n, generator=g) < 0.5).float(),
            "weight": torch.ones(n)}


@pytest.mark.parametrize("overrides", [
    {"bottom": "mmoe", "history_encoder": "category_attention", "item_bias": True},
    {"share_across_categories": False, "loss": "sampled_softmax"},
])
def test_few_shot_fine_tune_changes_only_the_new_category(overrides):
    from xrec_spark.model.few_shot import FewShotSettings, add_categories, fine_tune_new_rows

    model = tiny_model(**overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_categories(model, {4: [1, 2]})
    started = {k: v.clone() for k, v in model.state_dict().items()}
    fit = fine_tune_new_rows(model, _new_category_examples(), FewShotSettings(steps=30, lr=0.05, batch_size=16), [4])
    assert fit.steps == 30 and fit.examples == 40 and fit.final_loss < fit.first_loss
    after = model.state_dict()
    own = {n for n, _ in model.heads.heads["4"].named_parameters(prefix="heads.heads.4")}
    if model.user_towers is not None:
        own |= {n for n, _ in model.user_towers["4"].named_parameters(prefix="user_towers.4")}
    for name, old in before.items():
        if name in own:
            continue
        new = after[name]
        if new.shape != old.shape:   # a table indexed by category grew a row for category 4
            assert new.shape[0] == old.shape[0] + 1 and torch.equal(new[:-1], old), name
        else:
            assert torch.equal(new, old), f"{name} changed"
    assert any(not torch.equal(after[n], started[n]) for n in own)
    assert all(p.requires_grad for p in model.parameters())   # flags restored


def test_few_shot_without_examples_keeps_the_initial_head():
    from xrec_spark.model.few_shot import FewShotSettings, add_categories, fine_tune_new_rows

    model = tiny_model()
    add_categories(model, {4: [2]})
    start = [p.clone() for p in model.category_parameters(4)]
    empty = {k: v[:0] for k, v in _new_category_examples().items()}
    fit = fine_tune_new_rows(model, empty, FewShotSettings(steps=10), [4])
    assert fit.steps == 0 and fit.examples == 0
    assert all(torch.equal(a, b) for a, b in zip(start, model.category_parameters(4)))
    with pytest.raises(ValueError, match=r"categories \[1\] outside the adapted \[4\]"):
        fine_tune_new_rows(model, {**_new_category_examples(), "category_idx": torch.ones(40, dtype=torch.long)},
                           FewShotSettings(), [4])


def _model_before_new_items(**overrides):
    """A tiny model trained on items 1..8, on content that also holds items 9 (category 1,
    4 train positives) and 10 (category 2, 2 positives), added since its training."""
    from model_synthetic import tiny_config, tiny_frame
    from xrec_spark.model.content import ItemContent
    from xrec_spark.model.towers import CrossCategoryModel

    frame = pd.concat([tiny_frame(), pd.DataFrame({"item_idx": [9, 10], "category_idx": [1, 2],
                                                   "text": ["red boot", "rome atlas"], "train_count": [4, 2]})])
    cfg = tiny_config(**{"item_bias": True, "loss": "softmax", **overrides})
    model = CrossCategoryModel(cfg, TINY_SIZES, ItemContent.from_frame(frame, cfg, 10))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():   # as after training: an untrained model's heads give f_k(h) = 0 (popularity order)
        for p in model.heads.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def test_new_items_start_from_the_learned_count_prior():
    from xrec_spark.model.few_shot import add_items, start_item_rows

    model = _model_before_new_items()
    tower = model.item_tower
    counted = [1, 3, 4, 5, 7, 8]          # train_count > 0 among the trained items
    with torch.no_grad():                 # "learned" biases: 2 log(1 + count) + 1 exactly
        tower.bias.weight[counted, 0] = 2 * tower.content_log_popularity[counted] + 1
    add_items(model, 10)
    assert model.sizes.n_items == 10 and tower.ids.num_embeddings == 11 and not tower.ids.sparse
    start_item_rows(model, [9, 10])
    torch.testing.assert_close(tower.bias.weight[9:, 0], torch.tensor([2 * math.log(5) + 1, 2 * math.log(3) + 1]))
    assert torch.all(tower.ids.weight[9:] == 0)
    with pytest.raises(ValueError, match="below the item content's 11 rows"):
        add_items(model, 11)


def test_few_shot_items_fit_only_their_rows():
    from xrec_spark.model.few_shot import FewShotSettings, add_items, fine_tune_new_rows, start_item_rows

    model = _model_before_new_items(sparse_embeddings=True, history_encoder="mean", user_ids=False)
    add_items(model, 10)
    start_item_rows(model, [9])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Users 1-3 took item 9; users 4-5 took item 1, the category's context.
    examples = {"user_idx": torch.tensor([1, 2, 3, 4, 5]),
                "history": torch.tensor([[7, 0], [7, 1], [2, 0], [1, 0], [2, 7]]),
                "item_idx": torch.tensor([9, 9, 9, 1, 1]), "category_idx": torch.ones(5, dtype=torch.long),
                "label": torch.ones(5), "weight": torch.ones(5)}
    batch = {k: v[:3] for k, v in examples.items()}
    start_score = model(batch).detach()
    fit = fine_tune_new_rows(model, examples, FewShotSettings(steps=40, lr=0.05, batch_size=5), items=[9])
    assert fit.steps == 40 and fit.final_loss < fit.first_loss
    after = model.state_dict()
    own = {"item_tower.ids.weight", "item_tower.bias.weight"}
    for name, old in before.items():
        if name in own:
            rest = [r for r in range(old.shape[0]) if r != 9]
            assert torch.equal(after[name][rest], old[rest]) and not torch.equal(after[name][9], old[9]), name
        else:
            assert torch.equal(after[name], old), f"{name} changed"
    assert torch.all(model(batch) > start_score)      # the users who took item 9 now score it higher
    with pytest.raises(ValueError, match=r"categories \[3\] outside the adapted \[1\]"):
        fine_tune_new_rows(model, {**examples, "category_idx": torch.full((5,), 3)}, FewShotSettings(), items=[9])
