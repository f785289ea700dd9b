"""PNG figures of the report (matplotlib, Agg backend: no display needed). Pure pandas in."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: workers, CI and servers have no display

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from xrec_spark.eval import columns as C  # noqa: E402


def category_bars(frame: pd.DataFrame, systems: Sequence[str], path: Path, title: str) -> Path:
    """Grouped horizontal bars: one group per category, one bar per system, with CI whiskers.

    frame: category, system, value, ci_low, ci_high, groups (one metric, one slice).
    """
    categories = (frame.groupby("category")["groups"].max().sort_values(ascending=True).index.tolist())
    height = max(3.0, 0.32 * len(categories) * max(1, len(systems)) / 2 + 1.5)
    fig, ax = plt.subplots(figsize=(10, height))
    bar = 0.8 / max(1, len(systems))
    y = np.arange(len(categories))
    for i, system in enumerate(systems):
        part = frame[frame["system"] == system].set_index("category").reindex(categories)
        values = part["value"].to_numpy(dtype=float)
        low = np.clip(values - part["ci_low"].to_numpy(dtype=float), 0, None)
        high = np.clip(part["ci_high"].to_numpy(dtype=float) - values, 0, None)
        err = np.vstack([np.nan_to_num(low), np.nan_to_num(high)])
        # First system on top of its group, as in the legend.
        ax.barh(y + 0.4 - bar / 2 - i * bar, np.nan_to_num(values), height=bar, xerr=err, label=system,
                error_kw={"elinewidth": 0.6, "capsize": 1.5, "alpha": 0.7})
    groups = frame.groupby("category")["groups"].max()
    ax.set_yticks(y, [f"{c} (n={int(groups[c])})" for c in categories], fontsize=7)
    ax.set_xlabel("value (95% bootstrap interval); no bar = 0")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def transfer_heatmap(transfer: pd.DataFrame, names: dict[int, str], path: Path, max_categories: int = 30) -> Path:
    """Heatmap of log2(lift) of category_transfer: rows = source, columns = destination.

    transfer: src_category_idx, dst_category_idx, lift, users_both. The largest categories
    (by users_both on the diagonal or total) are kept when there are more than ``max_categories``.
    """
    size = (transfer.groupby("src_category_idx")["users_both"].max().sort_values(ascending=False))
    keep = sorted(size.index[:max_categories].tolist())
    sub = transfer[transfer["src_category_idx"].isin(keep) & transfer["dst_category_idx"].isin(keep)]
    grid = (sub.pivot_table(index="src_category_idx", columns="dst_category_idx", values="lift", aggfunc="first")
            .reindex(index=keep, columns=keep))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.log2(grid.to_numpy(dtype=float))
    for i in range(len(keep)):   # the diagonal is trivial (lift of a category with itself)
        values[i, i] = np.nan
    finite = values[np.isfinite(values)]
    bound = float(np.nanmax(np.abs(finite))) if finite.size else 1.0
    side = max(5.0, 1.5 + 0.3 * len(keep))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
    labels = [str(names.get(int(c), c))[:18] for c in keep]
    ax.set_xticks(range(len(keep)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(keep)), labels, fontsize=6)
    ax.set_xlabel("destination category")
    ax.set_ylabel("source category")
    ax.set_title("Category transfer: log2 lift of P(dst | src)\n(red: users of src over-engage in dst; diagonal blank)",
                 fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.7, label="log2 lift")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(history: pd.DataFrame, path: Path, title: str) -> Path:
    """Loss and validation metric per epoch. history: epoch, loss, valid_metric, metric_name, phase."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(history["epoch"], history["loss"], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch (all phases in order)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("train loss", color="tab:blue")
    if "phase" in history and history["phase"].notna().any():
        for phase, part in history.groupby("phase", sort=False):
            ax.axvspan(part["epoch"].min() - 0.4, part["epoch"].max() + 0.4, alpha=0.07,
                       color="grey" if len(ax.patches) % 2 else "tab:orange")
            ax.text(part["epoch"].mean(), ax.get_ylim()[1], str(phase), ha="center", va="top", fontsize=7)
    valid = history.dropna(subset=["valid_metric"]) if "valid_metric" in history else history.iloc[:0]
    if len(valid):
        ax2 = ax.twinx()
        name = str(valid["metric_name"].iloc[0]) if "metric_name" in valid else "valid metric"
        ax2.plot(valid["epoch"], valid["valid_metric"], "s--", color="tab:green", label=f"valid {name} (all)")
        by_slice = valid["valid_by_slice"] if "valid_by_slice" in valid else None
        if by_slice is not None and by_slice.map(lambda d: isinstance(d, dict) and bool(d)).all():
            # One dotted line per user slice: the groups behind the "all" figure need not move together.
            for slice_name, style in ((C.WARM, "^:"), (C.CROSS_CATEGORY, "v:"), (C.COLD_USER, "d:")):
                values = by_slice.map(lambda d: d.get(slice_name, float("nan")))
                if values.notna().any():
                    ax2.plot(valid["epoch"], values, style, alpha=0.7, label=f"valid {name} {slice_name}")
        ax2.set_ylabel(f"valid {name}", color="tab:green")
        ax2.legend(loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
