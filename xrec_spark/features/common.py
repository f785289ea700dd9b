"""Small column expressions and hashing shared by the feature transforms.

The split and slice values the features job writes are defined in :mod:`xrec_spark.names`, which
evaluation and training read too.
"""

from __future__ import annotations

import hashlib

import numpy as np
from pyspark.sql import Column
from pyspark.sql import functions as F

SECONDS_PER_DAY = 86_400
_MANTISSA = 2**53


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that spreads every input bit."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def uniform01(seed: int, tag: str, *keys: np.ndarray) -> np.ndarray:
    """Reproducible uniform draws in [0, 1) from a hash of ``seed``, ``tag`` and ``keys``.

    ``keys`` are integer arrays broadcast together (one draw per element of the broadcast
    shape). A seeded generator would depend on which rows share a batch and in what order;
    hashing each row's own key gives the same draw on every run and every cluster layout.
    ``tag`` separates independent draws made from the same key.
    """
    start = int.from_bytes(hashlib.blake2b(f"{seed}|{tag}".encode(), digest_size=8).digest(), "little")
    h = np.full(np.broadcast_shapes(*(np.shape(k) for k in keys)), start, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around multiplication is the point
        for key in keys:
            h = _mix64(h ^ np.asarray(key).astype(np.int64).view(np.uint64))
    # The top 53 bits of the 64-bit hash, as a double in [0, 1).
    return (h >> np.uint64(11)).astype(np.float64) / float(_MANTISSA)


def pad_ids(arr: str | Column, length: int) -> Column:
    """``arr`` (array<int>) cut to ``length`` elements and right-padded with 0 to exactly that."""
    col = F.col(arr) if isinstance(arr, str) else arr
    # coalesce per element makes the type array<int NOT NULL>, which the tables declare (a cast
    # cannot narrow containsNull).
    head = F.transform(F.slice(F.coalesce(col, F.array().cast("array<int>")), 1, length),
                       lambda x: F.coalesce(x.cast("int"), F.lit(0)))
    return F.concat(head, F.array_repeat(F.lit(0), F.lit(length) - F.size(head)))


def epoch_seconds(ts: str | Column) -> Column:
    """Seconds since the epoch (double, sub-second precision kept) of a timestamp column."""
    col = F.col(ts) if isinstance(ts, str) else ts
    return F.unix_micros(col).cast("double") / F.lit(1e6)
