"""Checkpoints: exact round trip, atomic write, refusal of mismatched or tampered files."""

from __future__ import annotations

import json

import pytest
import torch

from model_synthetic import TINY_SIZES, tiny_batch, tiny_config, tiny_frame, tiny_model
from xrec_spark.model.checkpoint import CheckpointMismatchError, load_model, read_checkpoint, save_model
from xrec_spark.model.content import ItemContent
from xrec_spark.model.transfer import init_new_category_head


def _content(**cfg):
    return ItemContent.from_frame(tiny_frame(), tiny_config(**cfg), TINY_SIZES.n_items)


def _trained(**cfg):
    """A tiny model after one optimizer step, so weights differ from a fresh initialisation."""
    model = tiny_model(**cfg)
    model(tiny_batch()).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return model.eval()


@pytest.mark.parametrize("cfg", [{}, {"bottom": "mmoe", "history_encoder": "gru", "share_across_categories": False}])
def test_round_trip_is_exact(tmp_path, cfg):
    model = _trained(**cfg)
    path = tmp_path / "ckpt" / "model.pt"
    save_model(path, model, {"model_version": "v1", "run_id": "r-7"})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    loaded, meta = load_model(path, _content(**cfg), expect=tiny_config(**cfg))
    assert meta["model_version"] == "v1" and meta["run_id"] == "r-7"
    assert meta["sizes"] == {"n_users": 5, "n_items": 8, "n_categories": 3}
    assert meta["model_config"]["embedding_dim"] == 8
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(model(tiny_batch()), loaded(tiny_batch()))


def test_grown_category_count_survives_the_round_trip(tmp_path):
    model = _trained()
    init_new_category_head(model, 4, [1, 2])
    save_model(tmp_path / "m.pt", model, {"model_version": "v2"})
    loaded, meta = load_model(tmp_path / "m.pt", _content())
    assert meta["sizes"]["n_categories"] == 4 and loaded.sizes.n_categories == 4


def test_other_config_is_refused_with_the_differing_keys(tmp_path):
    save_model(tmp_path / "m.pt", _trained(), {"model_version": "v1"})
    with pytest.raises(CheckpointMismatchError, match=r"model.embedding_dim: checkpoint 8, expected 16"):
        load_model(tmp_path / "m.pt", _content(), expect=tiny_config(embedding_dim=16))


def test_tampered_weights_or_meta_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_model(path, _trained(), {"model_version": "v1"})
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["item_tower.ids.weight"][1, 0] += 1.0
    torch.save(payload, tmp_path / "weights.pt")
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["meta"])
    meta["sizes"]["n_users"] = 50
    payload["meta"] = json.dumps(meta, sort_keys=True)
    torch.save(payload, tmp_path / "meta.pt")
    for name in ("weights.pt", "meta.pt"):
        with pytest.raises(CheckpointMismatchError, match="fails its sha256 check"):
            load_model(tmp_path / name, _content())


def test_unreadable_or_foreign_files_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_model(path, _trained(), {"model_version": "v1"})
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:200])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    torch.save({"state_dict": {}, "meta": "{}", "sha256": "x", "extra": ItemContent}, tmp_path / "code.pt")
    with pytest.raises(CheckpointMismatchError, match="cannot be read as a model checkpoint"):
        read_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointMismatchError, match="is not in format xrec-model/1"):
        read_checkpoint(tmp_path / "other.pt")
    # weights_only=True refuses to unpickle arbitrary objects (here: a class reference).
    with pytest.raises(CheckpointMismatchError, match="cannot be read as a model checkpoint"):
        read_checkpoint(tmp_path / "code.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_content_that_does_not_fit_is_refused(tmp_path):
    save_model(tmp_path / "m.pt", _trained(), {"model_version": "v1"})
    with_image = ItemContent.from_frame(tiny_frame().assign(image_vector=[[1.0, 2.0]] * 8), tiny_config(), 8)
    with pytest.raises(CheckpointMismatchError, match="item content image size 2, the model was trained with None"):
        load_model(tmp_path / "m.pt", with_image)
    fewer = ItemContent.from_frame(tiny_frame().iloc[:5], tiny_config(), 5)
    with pytest.raises(CheckpointMismatchError, match=r"covers items 1..5, the model has n_items=8"):
        load_model(tmp_path / "m.pt", fewer)


def test_save_model_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="meta needs 'model_version'"):
        save_model(tmp_path / "m.pt", _trained(), {"run_id": "r"})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_model(tmp_path / "m.pt", _trained(), {"model_version": "v", "when": object()})
    with pytest.raises(TypeError, match="unwrap DDP"):
        save_model(tmp_path / "m.pt", torch.nn.Linear(2, 2), {"model_version": "v"})  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_rows_an_item_does_not_own_are_saved_as_zeros(tmp_path):
    """min_item_count=2: items 2, 4, 6, 7 (0 or 1 train positives) never use their id and
    history rows, which keep their random start; the file holds zeros there, so an item that
    crosses the threshold in a later feature build is not scored with that noise. Owned rows
    and every score on the same item content are unchanged."""
    cfg = {"min_item_count": 2, "history_item_rows": True}
    model = _trained(**cfg)
    with torch.no_grad():   # history rows start at zero: give them values to mask
        model.history_rows.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(3))
    save_model(tmp_path / "m.pt", model, {"model_version": "v1"})
    loaded, _ = load_model(tmp_path / "m.pt", _content(**cfg))
    unowned, owned = [2, 4, 6, 7], [1, 3, 5, 8]   # train_count 5 0 2 1 3 0 1 4
    for name in ("item_tower.ids.weight", "history_rows.weight"):
        live, saved = model.state_dict()[name], loaded.state_dict()[name]
        assert torch.all(live[unowned] != 0) and torch.all(saved[unowned] == 0), name
        assert torch.equal(saved[owned], live[owned]), name
    with torch.no_grad():
        assert torch.equal(model(tiny_batch()), loaded(tiny_batch()))
