"""Means, group counts and 95% bootstrap intervals of per-group metric values (driver side).

Per-group values are small (one row per system x group x metric), so they are collected and
summarised with numpy. The bootstrap is **stratified by category** and **paired across systems**:

- for each (slice, category) one set of B resamples of its groups is drawn (with replacement,
  as multinomial counts), from a seed derived from ``seed``, the slice and the category, so the
  result does not depend on row or system order;
- the same resamples are applied to every system and metric (a matrix product), so systems are
  compared on identical resampled group sets;
- ``all`` (micro: mean over every group) and ``macro`` (mean over categories of the category
  means) are computed from the category-level resamples, each category keeping its size.

The interval is the 2.5th and 97.5th percentile of the resampled means (percentile method).

**Paired differences** (``paired_with``): for a reference system R (the model) and every other
system S, the per-group difference R − S is one more column of the same matrix, so it is
resampled with the *same* multinomial draws as R and S themselves; its rows carry system
``"R - S"`` (:func:`difference_system`). Because the groups are paired, the between-group
variance that widens each marginal interval cancels in the difference: two marginal intervals
can overlap while the difference's interval excludes 0. A verdict (:func:`verdict`) is a win or a
loss only when the difference's interval excludes 0.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import pandas as pd

from xrec_spark.eval import columns as C

ALPHA = 0.05
DIFF_SEP = " - "  # system name of a paired difference: "<reference> - <other>"
WIN, LOSS, NO_DIFFERENCE = "win", "loss", "no clear difference"
_CHUNK = 200  # resamples per matrix product: bounds memory to _CHUNK x groups weights


def _seed_for(seed: int, *parts: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), *(zlib.crc32(p.encode()) for p in parts)])


def _bootstrap_means(values: np.ndarray, samples: int, seq: np.random.SeedSequence) -> np.ndarray:
    """``[samples, M]`` means of resampled rows of ``values [n, M]`` (n >= 1)."""
    rng = np.random.default_rng(seq)
    n = values.shape[0]
    out = np.empty((samples, values.shape[1]))
    for start in range(0, samples, _CHUNK):
        stop = min(samples, start + _CHUNK)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start)
        out[start:stop] = counts @ values / n
    return out


def _interval(boot: np.ndarray | None, m: int) -> tuple[np.ndarray, np.ndarray]:
    if boot is None:
        nan = np.full(m, np.nan)
        return nan, nan
    low, high = np.percentile(boot, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)], axis=0)
    return low, high


def difference_system(reference: str, other: str) -> str:
    """System name of the paired difference ``reference − other`` in summaries and gold.metrics."""
    return f"{reference}{DIFF_SEP}{other}"


def is_difference(system: str) -> bool:
    return DIFF_SEP in system


def split_difference(system: str) -> tuple[str, str]:
    """(reference, other) of a :func:`difference_system` name."""
    reference, _, other = system.partition(DIFF_SEP)
    return reference, other


def verdict(ci_low: float, ci_high: float) -> str | None:
    """``win`` / ``loss`` when the paired difference's 95% interval excludes 0 (above / below),
    ``no clear difference`` when it contains 0, None when there is no interval."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return None
    if ci_low > 0:
        return WIN
    if ci_high < 0:
        return LOSS
    return NO_DIFFERENCE


def _with_differences(wide: pd.DataFrame, references: Sequence[str]) -> pd.DataFrame:
    """``wide`` plus a column (``R - S``, metric, k) = R − S per group for each reference R."""
    systems = list(dict.fromkeys(wide.columns.get_level_values(0)))
    extra = {}
    for ref in references:
        if ref not in systems:
            continue
        for other in systems:
            if other == ref:
                continue
            for _, metric, k in [c for c in wide.columns if c[0] == other]:
                if (ref, metric, k) in wide.columns:
                    extra[(difference_system(ref, other), metric, k)] = wide[(ref, metric, k)] - wide[(other, metric, k)]
    if not extra:
        return wide
    diffs = pd.DataFrame(extra, index=wide.index)
    diffs.columns = pd.MultiIndex.from_tuples(diffs.columns, names=wide.columns.names)
    return pd.concat([wide, diffs], axis=1)


def summarize(group_values: pd.DataFrame, samples: int, seed: int,
              paired_with: Sequence[str] = ()) -> pd.DataFrame:
    """Aggregate per-group values into per-category, micro (``all``) and ``macro`` rows.

    In: columns system, user_idx, category_idx, slice, metric, k, value; one row per
    (system, group, metric, k). Every system must cover the same groups (``group_metrics`` does).
    NaN values (undefined metrics) are not expected; rows with NaN are dropped first.
    ``paired_with``: reference systems R; for each other system S the paired difference R − S is
    summarised too, as system ``"R - S"`` (same resamples as R and S).
    Out: system, category (category_idx as text, ``all`` or ``macro``), slice, metric, k, value,
    groups, ci_low, ci_high.
    """
    if samples < 0:
        raise ValueError(f"eval.bootstrap_samples must be >= 0; got {samples}")
    frame = group_values.dropna(subset=[C.VALUE])
    if frame.empty:
        return pd.DataFrame(columns=[C.SYSTEM, C.CATEGORY_NAME, C.SLICE, C.METRIC, C.K, C.VALUE,
                                     C.GROUPS, C.CI_LOW, C.CI_HIGH])
    rows: list[pd.DataFrame] = []
    for slice_name, part in frame.groupby(C.SLICE, sort=True):
        wide = part.pivot_table(index=[C.CATEGORY, C.USER], columns=[C.SYSTEM, C.METRIC, C.K],
                                values=C.VALUE, aggfunc="first").sort_index()
        # A system without a value for some group would bias the comparison: refuse it.
        if wide.isna().any().any():
            raise ValueError(f"slice {slice_name!r}: systems do not cover the same groups; "
                             "build per-group values with group_metrics (it scores every system on every group)")
        wide = _with_differences(wide, paired_with)
        columns = wide.columns
        cat_means, cat_sizes, cat_boots = [], [], []
        for category, block in wide.groupby(level=0, sort=True):
            values = block.to_numpy(dtype=np.float64)
            boot = (_bootstrap_means(values, samples, _seed_for(seed, str(slice_name), str(category)))
                    if samples else None)
            mean = values.mean(axis=0)
            rows.append(_rows(columns, str(category), slice_name, mean, len(values), boot))
            cat_means.append(mean)
            cat_sizes.append(len(values))
            cat_boots.append(boot)
        sizes = np.array(cat_sizes, dtype=np.float64)
        total = sizes.sum()
        micro = (np.stack(cat_means) * sizes[:, None]).sum(axis=0) / total
        macro = np.stack(cat_means).mean(axis=0)
        micro_boot = macro_boot = None
        if samples:
            boots = np.stack(cat_boots)                     # [categories, B, M]
            micro_boot = (boots * sizes[:, None, None]).sum(axis=0) / total
            macro_boot = boots.mean(axis=0)
        rows.append(_rows(columns, C.ALL, slice_name, micro, int(total), micro_boot))
        rows.append(_rows(columns, C.MACRO, slice_name, macro, int(total), macro_boot))
    return pd.concat(rows, ignore_index=True)


def _rows(columns: pd.MultiIndex, category: str, slice_name: str, mean: np.ndarray, groups: int,
          boot: np.ndarray | None) -> pd.DataFrame:
    low, high = _interval(boot, len(mean))
    return pd.DataFrame({
        C.SYSTEM: columns.get_level_values(0),
        C.CATEGORY_NAME: category,
        C.SLICE: slice_name,
        C.METRIC: columns.get_level_values(1),
        C.K: columns.get_level_values(2).astype("int64"),
        C.VALUE: mean,
        C.GROUPS: groups,
        C.CI_LOW: low,
        C.CI_HIGH: high,
    })
