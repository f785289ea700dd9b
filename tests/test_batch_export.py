"""Embedding export with a real (tiny) model, and the candidates built from it."""

from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pyspark.sql import functions as F

from batch_fixtures import (
    BATCH, FEATURES, HISTORY, ITEM_CATEGORY, SEEN, TEXT, TRAIN_COUNT, WANTED_PAIRS, write_run, write_silver,
)
from conftest import make_config
from xrec_spark.batch.export import export_device, export_embeddings
from xrec_spark.batch.generate import generate_candidates
from xrec_spark.lineage import NoModelError
from xrec_spark.batch.showcase import cross_category_sample
from xrec_spark.config import ModelConfig
from xrec_spark.model import CrossCategoryModel, ItemContent, ModelSizes, save_model
from xrec_spark.tables import CANDIDATES, ITEM_EMBEDDINGS, JOB_LOG, USER_EMBEDDINGS

MODEL = ModelConfig(embedding_dim=8, hidden_dim=8, hash_buckets=64, max_tokens=8, seed=3)
# Trained before item 9 and user 6 existed.
SIZES = ModelSizes(n_users=5, n_items=8, n_categories=3)


def _content(n_items: int) -> ItemContent:
    items = [i for i in ITEM_CATEGORY if i <= n_items]
    frame = pd.DataFrame({"item_idx": items, "category_idx": [ITEM_CATEGORY[i] for i in items],
                          "text": [TEXT[i] for i in items], "train_count": [TRAIN_COUNT[i] for i in items]})
    return ItemContent.from_frame(frame, MODEL, n_items)


@pytest.fixture
def tiny_model(tmp_path):
    """A tiny model saved as version m1 (untrained weights: export must reproduce them exactly)."""
    model = CrossCategoryModel(MODEL, SIZES, _content(8)).eval()
    path = tmp_path / "ckpt" / "m1.pt"
    save_model(path, model, {"model_version": "m1"})
    model.set_content(_content(9))  # the reference sees item 9 too, as the export does
    return model, path


def _vectors(df, *keys):
    return {tuple(r[k] for k in keys): np.array(r.vector, dtype=np.float32) for r in df.collect()}


def test_export_matches_model_scores_covers_cold_items_and_is_idempotent(lakehouse, lakehouse_root, tiny_model):
    model, path = tiny_model
    write_silver(lakehouse)
    write_run(lakehouse, "m1", path)
    cfg = make_config(lakehouse_root, batch=BATCH, features=FEATURES)
    result = export_embeddings(lakehouse, cfg)
    assert result.model_version == "m1"

    items = lakehouse.read(ITEM_EMBEDDINGS)
    item_vec = _vectors(items, "item_idx")
    assert sorted(item_vec) == [(i,) for i in range(1, 10)]  # item 9 is unknown to the model: content tower
    assert {r.item_idx for r in items.where("cold").collect()} == {7}  # train_count == 0
    with torch.no_grad():
        expected_items = model.item_vectors(torch.arange(1, 10)).numpy()
    np.testing.assert_allclose(np.stack([item_vec[(i,)] for i in range(1, 10)]), expected_items, atol=1e-6)

    users = lakehouse.read(USER_EMBEDDINGS)
    user_vec = _vectors(users, "user_idx", "category_idx")
    # user 6 has no history and no id embedding: no vector (candidates fall back for it)
    assert set(user_vec) == WANTED_PAIRS - {(6, 3)}
    assert {r.model_version for r in users.select("model_version").distinct().collect()} == {"m1"}

    # Exported dot products are the model's scores, for every (pair, item of its category).
    triples = [(u, c, i) for (u, c) in user_vec for i in ITEM_CATEGORY if ITEM_CATEGORY[i] == c]
    batch = {"user_idx": torch.tensor([u for u, _, _ in triples]),
             "history": torch.tensor([HISTORY[u] for u, _, _ in triples]),
             "item_idx": torch.tensor([i for _, _, i in triples]),
             "category_idx": torch.tensor([c for _, c, _ in triples])}
    with torch.no_grad():
        scores = model(batch).numpy()
    dots = np.array([user_vec[(u, c)] @ item_vec[(i,)] for u, c, i in triples])
    np.testing.assert_allclose(dots, scores, rtol=1e-5, atol=1e-6)

    # Re-export replaces, never duplicates.
    counts = (items.count(), users.count())
    again = export_embeddings(lakehouse, cfg, model_version="m1")
    assert (lakehouse.read(ITEM_EMBEDDINGS).count(), lakehouse.read(USER_EMBEDDINGS).count()) == counts
    assert (again.items, again.cold_items, again.user_pairs, again.users) == (9, 1, 8, 5)
    keys = [r.run_key for r in lakehouse.read(JOB_LOG).where(F.col("job") == "export_embeddings").collect()]
    assert keys == ["m1", "m1"]

    # Candidates from the exported vectors: model rows, a fallback for user 6, nothing seen.
    day = date(2024, 6, 1)
    res = generate_candidates(lakehouse, cfg, day)
    cands = lakehouse.read(CANDIDATES)
    assert res.model_version == "m1" and (res.model_pairs, res.fallback_pairs) == (8, 1)
    fallback = cands.where(F.col("source") == "fallback")
    assert [(r.user_idx, r.item_idx) for r in fallback.orderBy("rank").collect()] == [(6, 9), (6, 8)]
    assert fallback.where(F.col("model_version").isNotNull()).count() == 0
    seen = lakehouse.spark.createDataFrame(SEEN, "user_idx int, item_idx int")
    assert cands.join(seen, ["user_idx", "item_idx"]).count() == 0
    # model candidates are the items of the pair's category with the largest exported dot products
    top = cands.where("source = 'model' AND rank = 1").collect()
    for r in top:
        allowed = [i for i in ITEM_CATEGORY if ITEM_CATEGORY[i] == r.category_idx and (r.user_idx, i) not in SEEN]
        best = max(allowed, key=lambda i: float(user_vec[(r.user_idx, r.category_idx)] @ item_vec[(i,)]))
        assert r.item_idx == best
    n = cands.count()
    generate_candidates(lakehouse, cfg, day)
    assert lakehouse.read(CANDIDATES).count() == n

    # The demo's sample: user u1 (books, music) in games, which they never touched.
    lines = cross_category_sample(lakehouse, day, k=2)
    assert lines[0] == "user u1: history in books (2), music (1); never touched games. Top 2 there:"
    expected_top = sorted((i for i in (7, 8, 9)), key=lambda i: -float(user_vec[(1, 3)] @ item_vec[(i,)]))[:2]
    assert [line.split()[2] for line in lines[1:]] == [f"i{i}" for i in expected_top]

    # A newer model (latest by finished_at) is exported next to the first, which stays.
    other = CrossCategoryModel(MODEL.model_copy(update={"seed": 4}), SIZES, _content(8))
    save_model(path.parent / "m2.pt", other, {"model_version": "m2"})
    write_run(lakehouse, "m2", path.parent / "m2.pt", finished=datetime(2024, 2, 1))
    assert export_embeddings(lakehouse, cfg).model_version == "m2"
    per_version = dict(lakehouse.read(ITEM_EMBEDDINGS).groupBy("model_version").count().collect())
    assert per_version == {"m1": 9, "m2": 9}


def test_a_category_that_appeared_after_training_falls_back_to_popularity(lakehouse, lakehouse_root, tmp_path):
    """The model knows books and music only (n_categories = 2); games (k = 3) appeared later.
    Export must not fail: games items get vectors from content and popularity (user 3's
    history holds one, so user encoding meets them too), no (user, games) vector is written,
    and the candidates of every games pair come from the popularity fallback."""
    sizes = ModelSizes(n_users=5, n_items=6, n_categories=2)
    path = tmp_path / "ckpt" / "m1.pt"
    save_model(path, CrossCategoryModel(MODEL, sizes, _content(6)).eval(), {"model_version": "m1"})
    write_silver(lakehouse)
    write_run(lakehouse, "m1", path)
    cfg = make_config(lakehouse_root, batch={**BATCH, "categories_for_all_users": []}, features=FEATURES)
    result = export_embeddings(lakehouse, cfg)
    items = _vectors(lakehouse.read(ITEM_EMBEDDINGS), "item_idx")
    assert sorted(items) == [(i,) for i in range(1, 10)]
    assert all(np.isfinite(v).all() for v in items.values())
    pairs = set(_vectors(lakehouse.read(USER_EMBEDDINGS), "user_idx", "category_idx"))
    assert pairs and all(c <= 2 for _, c in pairs)
    assert result.user_pairs == len(pairs)
    generate_candidates(lakehouse, cfg, date(2024, 6, 1))
    games = lakehouse.read(CANDIDATES).where("category_idx = 3")
    assert games.count() > 0
    assert {r.source for r in games.select("source").distinct().collect()} == {"fallback"}


def test_export_errors_name_what_is_missing(lakehouse, lakehouse_root, tmp_path):
    cfg = make_config(lakehouse_root, batch=BATCH, features=FEATURES)
    with pytest.raises(NoModelError, match="gold.runs does not exist"):
        export_embeddings(lakehouse, cfg)
    write_run(lakehouse, "m1", tmp_path / "gone.pt")
    with pytest.raises(NoModelError, match="no model_version 'm9'.*'m1'"):
        export_embeddings(lakehouse, cfg, model_version="m9")
    with pytest.raises(RuntimeError, match="checkpoint_path .*gone.pt does not exist"):
        export_embeddings(lakehouse, cfg)


def test_jobs_main_export_then_candidates(lakehouse, lakehouse_root, tiny_model, tmp_path, capsys):
    from jobs import export_embeddings as export_job
    from jobs import generate_candidates as candidates_job

    _, path = tiny_model
    write_silver(lakehouse)
    write_run(lakehouse, "m1", path)
    cfg = make_config(lakehouse_root, batch=BATCH, features=FEATURES)
    conf = tmp_path / "job.yaml"
    conf.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert export_job.main(["--config", str(conf)]) == 0
    assert candidates_job.main(["--config", str(conf), "--date", "2024-06-02"]) == 0
    out = capsys.readouterr().out
    assert "model m1: 9 item vectors (1 cold" in out
    assert "2024-06-02: 16 candidates, model m1 for 8 user x category pairs, popularity fallback for 1" in out
    with pytest.raises(SystemExit):
        candidates_job.main(["--config", str(conf), "--date", "June 2"])


def test_export_device_follows_batch_device_not_train_use_gpu(tmp_path):
    gpu_training = {"use_gpu": True}
    assert export_device(make_config(tmp_path, train=gpu_training, batch={"device": "cpu"})) == "cpu"
    # cuda is taken as given: the executors may have GPUs the driver cannot see.
    assert export_device(make_config(tmp_path, batch={"device": "cuda"})) == "cuda"
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert export_device(make_config(tmp_path)) == auto
    assert export_device(make_config(tmp_path, train=gpu_training)) == auto
