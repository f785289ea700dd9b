"""Model checkpoints: one file holding the state_dict, a JSON meta and a sha256 of both.

Loaded with ``torch.load(weights_only=True)`` (no code runs from the file). Loading refuses,
with :class:`CheckpointMismatchError`, a file that is not a checkpoint, was altered after
saving, was written for another configuration, or does not fit the given item content.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from pydantic import ValidationError

from xrec_spark.config import ContentEncoderKind, ModelConfig
from xrec_spark.model.content import ItemContent
from xrec_spark.model.towers import CrossCategoryModel, ModelSizes

if TYPE_CHECKING:
    import pandas

FORMAT = "xrec-model/1"


class CheckpointMismatchError(ValueError):
    """A checkpoint cannot be used here: unreadable, tampered, or built for other shapes/config."""


def _digest(state: Mapping[str, torch.Tensor], meta_json: str) -> str:
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)   # 0-d scalars cannot be viewed as bytes
        h.update(f"{name}:{tensor.dtype}:{tuple(state[name].shape)}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def _content_dims(content: ItemContent) -> dict[str, int | None]:
    return {"image": None if content.image is None else int(content.image.shape[1]),
            "text_vector": None if content.text_vector is None else int(content.text_vector.shape[1])}


def save_model(path: str | Path, model: CrossCategoryModel, meta: Mapping[str, Any]) -> None:
    """Write ``model`` atomically (temp file + rename) to ``path``.

    ``meta`` must be JSON-serialisable and hold ``model_version``; the model config, sizes and
    content vector sizes are added under ``model_config``, ``sizes`` and ``content_dims``.
    """
    if not isinstance(model, CrossCategoryModel):
        raise TypeError(f"save_model needs a CrossCategoryModel (unwrap DDP's .module), got {type(model).__name__}")
    if "model_version" not in meta:
        raise ValueError(f"save_model: meta needs 'model_version', got keys {sorted(meta)}")
    tower = model.item_tower
    full = {**meta, "format": FORMAT, "model_config": model.cfg.model_dump(mode="json"),
            "sizes": asdict(model.sizes), "content_dims": {"image": tower.d_img, "text_vector": tower.d_txt}}
    try:
        meta_json = json.dumps(full, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"save_model: meta is not JSON-serialisable: {e}") from e
    state = _unowned_rows_zeroed(model, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    payload = {"state_dict": state, "meta": meta_json, "sha256": _digest(state, meta_json)}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# The item tables whose rows an item owns only with model.min_item_count train positives.
OWNED_ROW_TABLES = ("item_tower.ids.weight", "history_rows.weight")


def _unowned_rows_zeroed(model: CrossCategoryModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the id and history rows of the items that own none written as zeros.

    Why: an item with fewer than ``min_item_count`` train positives never uses its rows (the
    model masks them), so they still hold their random initial values. Once the item crosses the
    threshold in a later feature build, the model would score it with that noise; a zero row
    adds nothing, and the item is served from its content, category, popularity and bias until a
    few-shot fit or a retrain trains the row. The live model is not changed, and its scores equal
    the saved model's on the same item content.
    """
    tower = model.item_tower
    for name in OWNED_ROW_TABLES:
        if name in state:
            rows = torch.arange(state[name].shape[0], device=tower.content_log_popularity.device)
            owned = tower.has_id_row(rows).cpu().to(state[name].dtype).unsqueeze(1)
            state[name] = state[name] * owned
    return state


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) of a checkpoint file after checking its format and sha256."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file} does not exist")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise CheckpointMismatchError(f"checkpoint {file} cannot be read as a model checkpoint: {e}") from e
    if not isinstance(payload, dict) or not {"state_dict", "meta", "sha256"} <= set(payload):
        raise CheckpointMismatchError(f"checkpoint {file} is not in format {FORMAT} "
                                      "(expected keys state_dict, meta, sha256)")
    state, meta_json = payload["state_dict"], payload["meta"]
    if _digest(state, meta_json) != payload["sha256"]:
        raise CheckpointMismatchError(f"checkpoint {file} fails its sha256 check: weights or meta were changed "
                                      "after saving; do not use it, re-export from training")
    meta = json.loads(meta_json)
    if meta.get("format") != FORMAT:
        raise CheckpointMismatchError(f"checkpoint {file} has format {meta.get('format')!r}, expected {FORMAT}")
    return state, meta


def load_model_on_items(path: str | Path, frame: "pandas.DataFrame") -> tuple[CrossCategoryModel, dict]:
    """The model saved at ``path`` on the item content of ``frame`` (rows of
    silver.item_features, see :meth:`ItemContent.from_frame`), items added after its training
    included (scored from their content); returns (model in eval mode, meta)."""
    _, meta = read_checkpoint(path)
    n_items = max(int(frame["item_idx"].max()) if len(frame) else 0, int(meta["sizes"]["n_items"]))
    try:
        cfg = ModelConfig.model_validate(meta["model_config"])
    except (KeyError, TypeError, ValidationError) as e:
        raise CheckpointMismatchError(f"checkpoint {path}: invalid model_config in its meta: {e}") from e
    return load_model(path, ItemContent.from_frame(frame, cfg, n_items))


def _config_diff(stored: ModelConfig, expect: ModelConfig) -> list[str]:
    a, b = stored.model_dump(mode="json"), expect.model_dump(mode="json")
    return [f"model.{k}: checkpoint {a[k]!r}, expected {b[k]!r}" for k in sorted(a) if a[k] != b.get(k)]


def load_model(path: str | Path, content: ItemContent,
               expect: ModelConfig | None = None) -> tuple[CrossCategoryModel, dict]:
    """Rebuild the model saved at ``path`` on ``content``; returns (model in eval mode, meta).

    Refuses (CheckpointMismatchError) a config different from ``expect``, content whose
    vector sizes differ from training or that covers fewer items than the model, and any
    state_dict whose names or shapes do not match the rebuilt model.
    """
    state, meta = read_checkpoint(path)
    try:
        cfg = ModelConfig.model_validate(meta["model_config"])
        sizes = ModelSizes(**meta["sizes"])
    except (KeyError, TypeError, ValidationError) as e:
        raise CheckpointMismatchError(f"checkpoint {path}: invalid model_config/sizes in its meta: {e}") from e
    if expect is not None:
        diff = _config_diff(cfg, expect)
        if diff:
            raise CheckpointMismatchError(f"checkpoint {path} was trained with another model config:\n  "
                                          + "\n  ".join(diff))
    dims = _content_dims(content)
    stored_dims = meta.get("content_dims", {})
    for name in ("image", "text_vector"):
        used = name == "image" or cfg.content_encoder is ContentEncoderKind.SENTENCE
        if used and stored_dims.get(name) != dims[name]:
            raise CheckpointMismatchError(f"checkpoint {path}: item content {name} size {dims[name]}, the model "
                                          f"was trained with {stored_dims.get(name)}")
    if content.n_items < sizes.n_items:
        raise CheckpointMismatchError(f"checkpoint {path}: item content covers items 1..{content.n_items}, the "
                                      f"model has n_items={sizes.n_items}; build content with n_items >= that")
    model = CrossCategoryModel(cfg, sizes, content)
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise CheckpointMismatchError(f"checkpoint {path} does not fit the model its meta describes: "
                                      + "; ".join(problems[:10]))
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, meta
