"""Mult-DAE: it learns a planted structure, and as the ``dae`` baseline it is tuned on valid and
ranks within the category like EASE (outside-N items by popularity, seen items excluded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_eval_ease import CATALOGUE, POSITIVES, TS
from xrec_spark.config import EvalConfig
from xrec_spark.eval import columns as C
from xrec_spark.eval.baselines import dae_rankings, tune_dae
from xrec_spark.model.autoencoder import (AutoencoderSettings, MultDAE, dense_rows, fit_autoencoder,
                                           profile_item_vectors)
from xrec_spark.tables import INTERACTIONS


def _planted(seed: int = 0) -> tuple[list[np.ndarray], list[int], int]:
    """4 groups of 10 items; each of 200 users holds 5 of their group's items in train, and one
    more of them held out."""
    rng = np.random.default_rng(seed)
    rows, held = [], []
    for u in range(200):
        group = np.arange(10) + 10 * (u % 4)
        picked = rng.choice(group, size=6, replace=False)
        rows.append(np.sort(picked[:5]))
        held.append(int(picked[5]))
    return rows, held, 40


def _hit_rate(model: MultDAE, rows: list[np.ndarray], held: list[int], n_items: int, k: int) -> float:
    x = dense_rows(rows, n_items)
    with torch.no_grad():
        scores = model.scores(x, torch.arange(n_items)).masked_fill(x > 0, float("-inf"))
    top = scores.topk(k, dim=1).indices
    return float(np.mean([h in set(t.tolist()) for h, t in zip(held, top)]))


def test_autoencoder_completes_a_planted_profile_far_better_than_chance():
    rows, held, n_items = _planted()
    settings = AutoencoderSettings(hidden=16, epochs=60, lr=1e-2, batch_size=50, seed=0)
    model, history = fit_autoencoder(rows, n_items, settings)
    assert len(history) == 60 and history[-1][1] < history[0][1]   # the likelihood improved
    # Chance: 5 of the 35 unseen items are in the top 5 (0.14); an untrained model is about that.
    untrained = MultDAE(n_items, 16, 0.5).eval()
    assert _hit_rate(untrained, rows, held, n_items, 5) < 0.4
    # The held-out item is one of the 5 unseen items of the user's own group: all 5 on top is 1.0.
    assert _hit_rate(model, rows, held, n_items, 5) > 0.9


def test_autoencoder_keeps_the_best_scored_epoch_and_leaves_the_global_rng_alone():
    rows, held, n_items = _planted(1)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    scored: list[int] = []

    def on_epoch(epoch: int, model: MultDAE) -> float:
        scored.append(epoch)
        return 1.0 if epoch == 4 else 0.0   # pretend epoch 4 was the best on valid

    model, history = fit_autoencoder(rows, n_items, AutoencoderSettings(hidden=8, epochs=10, seed=3),
                                     on_epoch, every=2)
    assert scored == [2, 4, 6, 8, 10]
    assert [e for e, _, s in history if not np.isnan(s)] == scored
    assert torch.rand(1).item() == expected_next.item()
    # The returned weights are epoch 4's: refitting 4 epochs with the same seed gives them.
    again, _ = fit_autoencoder(rows, n_items, AutoencoderSettings(hidden=8, epochs=4, seed=3))
    torch.testing.assert_close(model.decoder.weight, again.decoder.weight)
    with pytest.raises(ValueError, match="no user"):
        fit_autoencoder([np.array([], dtype=np.int64)], n_items, AutoencoderSettings())


def test_dae_baseline_is_tuned_on_valid_and_ranks_within_the_category(spark):
    rows = [(u, i, 1 if i != 13 else 2, TS, 5.0, 1, 1.0, "train", None) for u, i in POSITIVES]
    rows += [(1, 12, 1, TS, 5.0, 1, 1.0, "valid", "warm"), (3, 10, 1, TS, 5.0, 1, 1.0, "valid", "warm")]
    inter = spark.createDataFrame(rows, INTERACTIONS.schema)
    features = spark.createDataFrame(CATALOGUE, "item_idx int, category_idx int, train_count long")
    cfg = EvalConfig(dae_items=4, dae_hidden=[2, 3], dae_epochs=4, dae_eval_every=2, tune_k=3)
    fit = tune_dae(inter, features, cfg)
    assert [(h, e) for h, e, _, _ in fit.grid] == [(2, 2), (2, 4), (3, 2), (3, 4)]
    assert all(n == 2 for *_, n in fit.grid)
    best = max(fit.grid, key=lambda g: (g[2], -g[1]))
    assert (fit.settings.hidden, fit.epoch) == best[:2] and fit.data.items.tolist() == [11, 12, 10, 13]

    pairs = spark.createDataFrame([(4, 1), (1, 1), (9, 1)], "user_idx int, category_idx int")
    seen = spark.createDataFrame([*POSITIVES, (1, 15)], "user_idx int, item_idx int")
    lists: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for r in sorted(dae_rankings(fit, pairs, seen, k=5).collect(), key=lambda r: r[C.RANK]):
        assert r[C.SYSTEM] == "dae"
        lists.setdefault((r[C.USER], r[C.CATEGORY]), []).append((r[C.ITEM], r[C.SCORE]))
    # User 4 saw 12 and 13: category 1's unseen items inside N (10, 11) by the decoder's logits,
    # then 15 and 14 outside N by popularity; user 1 saw 10, 11 and 15: 12, then 14.
    u4 = lists[(4, 1)]
    assert sorted(i for i, _ in u4[:2]) == [10, 11] and [i for i, _ in u4[2:]] == [15, 14]
    assert [s for _, s in u4] == sorted((s for _, s in u4), reverse=True)
    assert [i for i, _ in lists[(1, 1)]] == [12, 14]
    assert (9, 1) not in lists   # no train positive: no list, as for EASE


def test_profile_item_vectors_put_items_of_one_taste_group_together():
    rows, _, _ = _planted(2)
    profiles = [r + 1 for r in rows]                 # item ids 1..40 (0 is padding)
    items = np.arange(40, 0, -1)                     # any order: vectors follow it
    vectors = profile_item_vectors(profiles, items, dim=8,
                                   settings=AutoencoderSettings(epochs=40, lr=1e-2, batch_size=50, seed=0))
    assert vectors.shape == (40, 8)
    unit = torch.nn.functional.normalize(vectors, dim=1)
    cosine = unit @ unit.T
    group = torch.as_tensor((items - 1) // 10)
    same = group.unsqueeze(0) == group.unsqueeze(1)
    off_diagonal = ~torch.eye(40, dtype=torch.bool)
    assert float(cosine[same & off_diagonal].mean()) > float(cosine[~same].mean()) + 0.3
