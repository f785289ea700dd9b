"""The towers and CrossCategoryModel: shapes, export exactness, cold ids, id-dropout, no-sharing."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys

import pandas as pd
import pytest
import torch

from model_synthetic import TINY_SIZES, tiny_batch, tiny_config, tiny_frame, tiny_model
from xrec_spark.config import BottomKind, HistoryEncoderKind
from xrec_spark.model.content import ItemContent
from xrec_spark.model.encoders import HistoryEncoder
from xrec_spark.model.heads import CategoryHeads
from xrec_spark.model.layers import init_module, unique_items
from xrec_spark.model.towers import CrossCategoryModel, ModelSizes

GRID = [dict(history_encoder=h, bottom=b, fusion=f, share_across_categories=s)
        for h, b, f, s in itertools.product(["none", "mean", "attention", "gru", "category_attention"], ["shared", "mmoe", "ple"],
                                            ["concat", "gated"], [True, False])]


def _ids(kw: dict) -> str:
    return "-".join(str(v) for v in kw.values())


def test_model_package_never_imports_pyspark():
    code = ("import sys, importlib, pkgutil, xrec_spark.model as m\n"
            "for info in pkgutil.iter_modules(m.__path__): importlib.import_module(f'xrec_spark.model.{info.name}')\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('pyspark', 'py4j', 'delta'))\n"
            "print(len(list(pkgutil.iter_modules(m.__path__))), bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n_modules, bad = out.stdout.strip().split(" ", 1)
    assert int(n_modules) >= 8 and bad == "[]"


@pytest.mark.parametrize("kw", GRID, ids=_ids)
def test_shapes_finite_scores_and_export_equals_forward(kw):
    model = tiny_model(**kw)
    batch = tiny_batch()
    u, v = model.encode(batch)
    assert u.shape == (6, 8) and v.shape == (6, 8)
    scores = model(batch)
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    scores.sum().backward()
    model.eval()
    with torch.no_grad():
        expected = model(batch)
        exported = (model.user_vectors(batch["user_idx"], batch["history"], batch["category_idx"])
                    * model.item_vectors(batch["item_idx"])).sum(-1)
    assert torch.allclose(exported, expected, atol=1e-5, rtol=0)


def _content_with_new_item(copy_of: int) -> ItemContent:
    """Tiny content plus item 9, a copy of item ``copy_of``'s content (text, category, popularity)."""
    frame = tiny_frame()
    row = frame[frame.item_idx == copy_of].assign(item_idx=9)
    return ItemContent.from_frame(pd.concat([frame, row]), tiny_config(), 9)


def test_new_item_is_scored_from_content_alone():
    model = tiny_model().eval()
    model.set_content(_content_with_new_item(copy_of=3))
    with torch.no_grad():
        new, known = model.item_vectors(torch.tensor([9, 3]))
        # Same content as item 3 and no id embedding: exactly item 3's vector minus its id row.
        assert torch.allclose(new, known - model.item_tower.ids.weight[3], atol=1e-6)
        batch = {**tiny_batch(), "item_idx": torch.tensor([9, 9, 9, 9, 9, 9])}
        assert torch.isfinite(model(batch)).all()


def test_item_without_content_row_is_refused():
    with pytest.raises(ValueError, match="item_idx 9; the item content covers 0..8: call set_content"):
        tiny_model().item_vectors(torch.tensor([1, 9]))


def test_unknown_users_are_represented_by_history_only():
    model = tiny_model().eval()
    history = torch.tensor([[2, 3, 5, 0]] * 3)
    with torch.no_grad():
        zero, unknown, known = model.user_vectors(torch.tensor([0, 99, 2]), history, torch.tensor([1, 1, 1]))
    assert torch.equal(zero, unknown)
    assert not torch.allclose(zero, known)


def test_without_user_ids_a_user_is_their_history():
    model = tiny_model(user_ids=False).eval()
    assert model.user_tower.ids is None
    assert not any("user_tower.ids" in name for name, _ in model.named_parameters())
    history = torch.tensor([[2, 3, 5, 0]] * 3)
    with torch.no_grad():
        zero, unknown, known = model.user_vectors(torch.tensor([0, 99, 2]), history, torch.tensor([1, 1, 1]))
    assert torch.equal(zero, unknown) and torch.equal(zero, known)
    with pytest.raises(ValueError, match="user_ids is false and history_encoder is none"):
        tiny_config(user_ids=False, history_encoder="none")


def test_history_item_dropout_drops_items_in_training_only():
    model = tiny_model(history_item_dropout=0.5)
    users, history = torch.tensor([1] * 400), torch.full((400, 10), 3)
    model.train()
    _, dropped = model._drop_histories(users, history)
    assert 0.45 < float((dropped == 0).float().mean()) < 0.55
    assert set(dropped.unique().tolist()) == {0, 3}
    model.eval()
    assert torch.equal(model._drop_histories(users, history)[1], history)


def test_full_id_dropout_equals_content_only_and_leaves_global_rng_alone():
    model = tiny_model(id_dropout=1.0)
    items = torch.tensor([1, 3, 5])
    model.eval()
    with torch.no_grad():
        with_ids = model.item_vectors(items)
    model.train()
    state = torch.get_rng_state()
    with torch.no_grad():
        dropped = model.item_vectors(items)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(dropped, with_ids - model.item_tower.ids.weight[items], atol=1e-6)


def test_id_dropout_rate_and_determinism_from_the_model_seed():
    def kept_fraction(seed: int) -> list[bool]:
        model = tiny_model(id_dropout=0.5, seed=seed).train()
        keep = model.item_tower.dropout(400, torch.device("cpu"))
        return keep.squeeze(1).bool().tolist()

    a, b, c = kept_fraction(1), kept_fraction(1), kept_fraction(2)
    assert a == b and a != c
    assert 0.4 < sum(a) / len(a) < 0.6


def test_same_seed_same_parameters():
    a, b, c = tiny_model(seed=3), tiny_model(seed=3), tiny_model(seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.item_tower.ids.weight, c.item_tower.ids.weight)


def test_heads_start_near_identity():
    head = tiny_model().heads.head(2).linear
    assert torch.allclose(head.weight, torch.eye(8), atol=0.05) and not head.bias.any()


@pytest.mark.parametrize("share", [True, False])
def test_shared_and_head_parameters_partition_the_model(share):
    model = tiny_model(share_across_categories=share, bottom="mmoe")
    shared = {id(p) for p in model.shared_parameters()}
    per_k = [{id(p) for p in model.head_parameters([k])} for k in (1, 2, 3)]
    assert shared.isdisjoint(set().union(*per_k))
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(per_k, 2))
    assert shared | set().union(*per_k) == {id(p) for p in model.parameters()}
    tower_ids = {id(p) for p in model.user_towers["2"].parameters()} if not share else set()
    assert tower_ids <= per_k[1]


def test_shared_model_carries_taste_across_categories_and_no_sharing_does_not():
    users, cats = torch.tensor([1, 1]), torch.tensor([1, 1])
    # Two histories differing only in category-2 items (3 vs 8).
    histories = torch.tensor([[2, 3, 0, 0], [2, 8, 0, 0]])
    for share, differs in ((True, True), (False, False)):
        model = tiny_model(share_across_categories=share).eval()
        with torch.no_grad():
            a, b = model.user_vectors(users, histories, cats)
        assert (not torch.allclose(a, b)) == differs, f"share={share}"


def test_no_sharing_gradients_stay_in_the_batch_category():
    model = tiny_model(share_across_categories=False)
    batch = {k: v[[0, 3]] for k, v in tiny_batch().items()}  # category 1 only
    model(batch).sum().backward()
    for k, touched in ((1, True), (2, False), (3, False)):
        grads = [p.grad for p in model.head_parameters([k])]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == touched, f"category {k}"


@pytest.mark.parametrize("kind", ["mean", "attention", "gru"])
def test_history_encoder_ignores_padding(kind):
    gen = torch.Generator().manual_seed(0)
    enc = HistoryEncoder(HistoryEncoderKind(kind), dim=4)
    items = torch.randn(2, 3, 4, generator=gen)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = enc(items, mask)
    padded = enc(torch.cat([items, torch.randn(2, 2, 4, generator=gen)], 1), torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], 1))
    assert torch.allclose(out, padded, atol=1e-6)
    assert not out[1].any()  # empty history pools to zeros
    if kind == "mean":
        assert torch.allclose(out[0], items[0, :2].mean(0))


def test_unique_items_matches_torch_unique():
    idx = torch.tensor([5, 0, 3, 5, 9, 3, 0])
    for rows in (10, 1000):  # the marking path and the sorting path
        uniq, inverse = unique_items(idx, rows)
        assert uniq.tolist() == [0, 3, 5, 9] and torch.equal(uniq[inverse], idx)


@pytest.mark.parametrize("change, error, match", [
    ({"category_idx": torch.tensor([1, 2, 3, 1, 2, 4])}, ValueError, r"category_idx 4 outside 1..3"),
    ({"category_idx": torch.tensor([1, 2, 0, 1, 2, 3])}, ValueError, r"category_idx 0 outside 1..3"),
    ({"history": torch.full((6, 4), 12)}, ValueError, r"batch\['history'\] has item_idx 12"),
    ({"item_idx": torch.tensor([1.0, 2, 3, 4, 5, 6])}, TypeError, r"batch\['item_idx'\] must be a long"),
    ({"user_idx": torch.tensor([1, 2])}, ValueError, "batch sizes differ"),
    ({"user_idx": None}, ValueError, r"lacks keys \['user_idx'\]"),
])
def test_bad_batches_are_refused(change, error, match):
    batch = {**tiny_batch(), **change}
    batch = {k: v for k, v in batch.items() if v is not None}
    with pytest.raises(error, match=match):
        tiny_model().encode(batch)


def test_set_content_refuses_other_vector_sizes():
    model = tiny_model()
    content = ItemContent.from_frame(tiny_frame().assign(image_vector=[[1.0, 0.0]] * 8), tiny_config(), 8)
    with pytest.raises(ValueError, match="image dim 2 .* built with image None"):
        model.set_content(content)


def test_model_sizes_are_validated():
    with pytest.raises(ValueError, match="n_categories must be >= 1"):
        ModelSizes(3, 3, 0)
    with pytest.raises(TypeError, match="n_users must be int"):
        ModelSizes(3.0, 3, 1)  # type: ignore[arg-type]
    assert dataclasses.asdict(TINY_SIZES) == {"n_users": 5, "n_items": 8, "n_categories": 3}


def test_image_and_sentence_modalities():
    frame = tiny_frame().assign(image_vector=[[float(i), 1.0, 0.0] for i in range(8)],
                                text_vector=[[0.1 * i] * 5 for i in range(8)])
    for fusion in ("concat", "gated"):
        cfg = tiny_config(content_encoder="sentence", fusion=fusion)
        model = CrossCategoryModel(cfg, TINY_SIZES, ItemContent.from_frame(frame, cfg, 8))
        assert model.item_tower.content.image_proj.in_features == 3
        assert model.item_tower.content.text_proj.in_features == 5 and model.item_tower.content.bag is None
        assert torch.isfinite(model(tiny_batch())).all()


@pytest.mark.parametrize("kind", ["mean", "attention", "gru"])
def test_pooling_rows_of_a_table_equals_pooling_the_gathered_history(kind):
    gen = torch.Generator().manual_seed(1)
    enc = HistoryEncoder(HistoryEncoderKind(kind), dim=4)
    table = torch.randn(5, 4, generator=gen, requires_grad=True)
    index = torch.tensor([[1, 3, 0], [2, 2, 4], [0, 0, 0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    pooled = enc.pool(table, index, mask)
    assert torch.allclose(pooled, enc(table[index], mask), atol=1e-6)
    pooled.sum().backward()
    assert table.grad is not None and table.grad[1:].abs().sum() > 0
    assert not table.grad[0].any()  # row 0 is picked only at padding positions


def test_history_items_go_through_the_candidate_item_tower():
    model = tiny_model(id_dropout=0.0)
    batch = {k: v[:1] for k, v in tiny_batch().items()}  # candidate item 1, history items 2, 3, 5
    u, _ = model.encode(batch)
    u.sum().backward()
    touched = model.item_tower.ids.weight.grad.abs().sum(1).nonzero().squeeze(1).tolist()
    assert touched == [2, 3, 5]


def test_ple_head_gates_the_shared_and_its_own_experts_and_trains_only_its_own():
    heads = CategoryHeads(n_categories=3, dim=8, hidden=16, kind=BottomKind.PLE, n_experts=2, n_specific=3)
    generator = torch.Generator().manual_seed(0)
    for module in heads.modules():
        init_module(module, generator)
    h = torch.randn(6, 8, generator=generator)
    category = torch.tensor([2, 1, 3, 1, 2, 3])
    out = heads(h, category)

    one = heads.head(1)
    assert one.gate.out_features == 2 + 3 and one.experts.w1.shape[0] == 3
    rows = h[category == 1]
    experts = torch.cat([heads.bottom(rows), one.experts(rows)], dim=1)          # [2, 5, 8]
    weights = torch.softmax(one.gate(rows), dim=-1)                              # [2, 5]
    expected = one.linear(rows + (weights.unsqueeze(-1) * experts).sum(1))
    torch.testing.assert_close(out[category == 1], expected)

    out[category == 1].sum().backward()
    assert one.experts.w1.grad.abs().sum() > 0 and heads.bottom.w1.grad.abs().sum() > 0
    for k in (2, 3):   # in the graph (rows are reassembled in batch order), with zero gradient
        assert not heads.head(k).experts.w1.grad.any() and not heads.head(k).gate.weight.grad.any()
    params = {id(p) for p in heads.head(1).parameters()}
    assert id(one.experts.w2) in params   # its own experts are θ_1: frozen and transferred with the head


def test_history_item_rows_start_at_zero_and_train_only_items_read_as_history():
    plain, own = tiny_model(id_dropout=0.0), tiny_model(id_dropout=0.0, history_item_rows=True)
    batch = tiny_batch()
    torch.testing.assert_close(own(batch), plain(batch))   # zero rows: the tied model at the start
    one = {k: v[:1] for k, v in batch.items()}              # candidate item 1, history items 2, 3, 5
    u, v = own.encode(one)
    (u * v).sum().backward()
    touched = own.history_rows.weight.grad.abs().sum(1).nonzero().squeeze(1).tolist()
    assert touched == [2, 3, 5]   # the candidate's own history row is not read


def test_history_item_rows_skip_items_below_min_count():
    model = tiny_model(id_dropout=0.0, history_item_rows=True, min_item_count=10**6)
    batch = {k: v[:1] for k, v in tiny_batch().items()}
    u, _ = model.encode(batch)
    u.sum().backward()
    assert not model.history_rows.weight.grad.any()


@pytest.mark.parametrize("power", [1.0, 0.5, 0.0])
def test_mean_pooling_divides_the_sum_by_the_count_to_the_power(power):
    enc = HistoryEncoder(HistoryEncoderKind.MEAN, dim=2, pool_power=power)
    table = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0], [5.0, 0.0], [1.0, 1.0]])
    index = torch.tensor([[1, 2, 3, 4], [4, 0, 0, 0], [0, 0, 0, 0]])
    mask = index != 0
    expected = torch.tensor([[10.0, 7.0] if power == 0.0 else [10.0 / 4 ** power, 7.0 / 4 ** power],
                             [1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(enc.pool(table, index, mask), expected)
    torch.testing.assert_close(enc(table[index], mask), expected)


def test_init_item_rows_sets_the_rows_asked_at_the_initialisers_spread():
    model = tiny_model()
    before = model.item_tower.ids.weight.detach().clone()
    vectors = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 5.0
    model.init_item_rows(torch.tensor([2, 4, 7]), vectors)
    after = model.item_tower.ids.weight.detach()
    scale = 0.1 / vectors.std()
    torch.testing.assert_close(after[[2, 4, 7]], vectors * scale)
    untouched = [i for i in range(after.shape[0]) if i not in (2, 4, 7)]
    torch.testing.assert_close(after[untouched], before[untouched])


@pytest.mark.parametrize("sparse_text", [False, True])
def test_sparse_embeddings_give_the_id_tables_sparse_gradients_and_the_text_table_only_on_request(sparse_text):
    model = tiny_model(sparse_embeddings=True, sparse_text=sparse_text, item_bias=True)
    (model(tiny_batch()) ** 2).sum().backward()
    assert model.item_tower.ids.weight.grad.is_sparse and model.item_tower.bias.weight.grad.is_sparse
    bag = model.item_tower.content.bag
    assert bag.weight.grad.is_sparse is sparse_text
    assert any(p is bag.weight for p in model.sparse_parameters()) is sparse_text
