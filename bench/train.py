"""Training throughput: in-memory tensors vs the full Delta -> loader -> DDP path.

    .venv/bin/python bench/train.py                       # 300k rows, both loaders
    .venv/bin/python bench/train.py --rows 100000 --loaders arrow

Prints samples/s for
  (a) the same model and optimizer step trained in one process from in-memory tensors,
  (b) the full path (TorchDistributor, pinned Delta files, loader, DDP train function), 1 process,
  (c) the same with 2 processes (gloo on the CPU),
all in one run, plus the ratios b/a and c/b; (a) is measured before and after the launches and
the higher figure is the baseline. (b) and (c) are the train function's own
throughput over its epochs (loader waits included, process start-up and validation not); the
wall time of each launch is printed too. Tables are synthetic silver tables written with the
real Lakehouse under a temporary directory (or --root).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BENCH_MODEL = {"embedding_dim": 32, "hidden_dim": 64, "hash_buckets": 16384, "max_tokens": 16,
               "history_encoder": "mean", "id_dropout": 0.1}


def write_tables(spark, lake, rows: int, users: int, items: int, categories: int, history: int, seed: int) -> None:
    """Synthetic silver tables: training examples with fixed-length histories, items, indexes."""
    from pyspark.sql import functions as F

    from xrec_spark.tables import CATEGORY_INDEX, ITEM_FEATURES, ITEM_INDEX, TRAINING_EXAMPLES, USER_INDEX

    lake.overwrite(USER_INDEX, spark.range(1, users + 1).select(
        F.concat(F.lit("u"), F.col("id")).alias("user_id"), F.col("id").cast("int").alias("user_idx")))
    lake.overwrite(ITEM_INDEX, spark.range(1, items + 1).select(
        F.concat(F.lit("i"), F.col("id")).alias("item_id"), F.col("id").cast("int").alias("item_idx")))
    lake.overwrite(CATEGORY_INDEX, spark.range(1, categories + 1).select(
        F.concat(F.lit("c"), F.col("id")).alias("category"), F.col("id").cast("int").alias("category_idx")))
    item_cat = (F.col("id") % categories + 1).cast("int")
    # A null array<float> whose elements are declared non-null, as silver.item_features wants.
    no_vector = F.when(F.lit(False), F.array(F.lit(0.0).cast("float")))
    lake.overwrite(ITEM_FEATURES, spark.range(1, items + 1).select(
        F.col("id").cast("int").alias("item_idx"), item_cat.alias("category_idx"),
        F.concat(F.lit("item tag"), (F.col("id") % 50).cast("string"), F.lit(" shelf"),
                 (F.col("id") % 7).cast("string")).alias("text"),
        no_vector.alias("image_vector"), no_vector.alias("text_vector"),
        (F.col("id") % 13).cast("long").alias("train_count")))
    item = (F.floor(F.pow(F.rand(seed), 2.0) * items) + 1).cast("int")   # skewed popularity
    hist = [F.coalesce((F.floor(F.rand(seed + 1 + j) * items) + 1).cast("int"), F.lit(0)) for j in range(history)]
    examples = spark.range(rows).select(
        (F.col("id") % users + 1).cast("int").alias("user_idx"), item.alias("item_idx"),
        F.lit(0).alias("category_idx"), (F.rand(seed + 99) < 0.2).cast("float").alias("label"),
        F.lit(1.0).cast("float").alias("weight"), F.array(*hist).alias("history"))
    # category_idx must match the item's category in item_features.
    examples = examples.withColumn("category_idx", (F.col("item_idx") % categories + 1).cast("int"))
    lake.overwrite(TRAINING_EXAMPLES, examples.repartition(8))


def in_memory(spec, cfg, steps_cap: int) -> tuple[float, int]:
    """(samples/s, rows) of the same model/loss/optimizer step on tensors already in memory."""
    import numpy as np
    import torch

    from xrec_spark.model.losses import MultiTaskLoss
    from xrec_spark.model.towers import CrossCategoryModel, ModelSizes
    from xrec_spark.model.transfer import phase_param_groups
    from xrec_spark.train.batching import to_tensors
    from xrec_spark.train.loader import COLUMNS, chunk_from_table, read_pinned
    from xrec_spark.train.ranks import cpu_threads_per_rank
    from xrec_spark.train.pinned import load_content
    from xrec_spark.train.trainer import _Objective

    torch.set_num_threads(cpu_threads_per_rank(1))
    table = spec.inputs["silver.training_examples"]
    data = to_tensors(chunk_from_table(read_pinned(table.files, table.path, list(COLUMNS)), COLUMNS))
    n = int(data["label"].shape[0])
    content = load_content(spec, cfg)
    sizes = ModelSizes(spec.sizes.n_users, spec.sizes.n_items, spec.sizes.n_categories)
    model = CrossCategoryModel(cfg.model, sizes, content)
    loss = MultiTaskLoss(cfg.model, sizes.n_categories)
    objective = _Objective(model, loss, None)
    phase = cfg.train.phases[0]
    groups = phase_param_groups(model, loss, phase.name, phase.lr, phase.shared_lr_scale,
                                spec.source_categories, spec.target_categories)
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.Adam(groups)
    order = torch.from_numpy(np.random.default_rng(0).permutation(n))
    bs = cfg.train.batch_size
    steps = min(n // bs, steps_cap)
    t0 = time.perf_counter()
    for s in range(steps):
        idx = order[s * bs:(s + 1) * bs]
        batch = {k: v[idx] for k, v in data.items()}
        optimizer.zero_grad(set_to_none=True)
        objective(batch).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
    return steps * bs / (time.perf_counter() - t0), steps * bs


def full_path(cfg, lake, processes: int, loader: str) -> tuple[float, float, float]:
    """(samples/s reported by the train function, its data-wait share, wall seconds of the launch)."""
    from xrec_spark.train.launch import build_spec, launch

    run_cfg = cfg.with_overrides([f"train.num_processes={processes}", f"train.loader={loader}"])
    spec = build_spec(run_cfg, lake, resume="never")
    t0 = time.perf_counter()
    result = launch(spec, run_cfg)
    return result.metrics["samples_per_s"], result.metrics["data_wait_share"], time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--categories", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--loaders", default="petastorm,arrow")
    parser.add_argument("--root", default=None, help="lakehouse root (default: a temporary directory)")
    parser.add_argument("--reuse", action="store_true", help="keep the tables already under --root")
    args = parser.parse_args()

    from xrec_spark.config import build_config
    from xrec_spark.session import get_spark
    from xrec_spark.tables import Lakehouse

    root = Path(args.root or tempfile.mkdtemp(prefix="xrec-bench-train-")) / "lakehouse"
    cfg = build_config({
        "spark": {"master": "local[2]", "shuffle_partitions": 4, "conf": {"spark.ui.enabled": "false"}},
        "lakehouse": {"root": str(root)}, "model": BENCH_MODEL,
        "train": {"batch_size": args.batch_size, "phases": [{"name": "pretrain", "epochs": 1, "lr": 0.002}],
                  "checkpoint_every_steps": 10_000},
    })
    spark = get_spark(cfg)
    spark.sparkContext.setLogLevel("ERROR")
    lake = Lakehouse(spark, cfg.lakehouse.root)
    t0 = time.perf_counter()
    from xrec_spark.tables import TRAINING_EXAMPLES

    if not (args.reuse and lake.exists(TRAINING_EXAMPLES)):
        write_tables(spark, lake, args.rows, args.users, args.items, args.categories, 20, seed=1)
    rows = lake.read(TRAINING_EXAMPLES).count()
    print(f"tables: {rows:,} training rows in 8 files under {root} ({time.perf_counter() - t0:.0f}s)", flush=True)
    from xrec_spark.train.launch import build_spec

    spec = build_spec(cfg, lake, resume="never")
    a_first, rows_a = in_memory(spec, cfg, steps_cap=rows // args.batch_size)
    print(f"load average {os.getloadavg()[0]:.1f}; batch {args.batch_size}; model {BENCH_MODEL}", flush=True)
    print(f"(a) in-memory tensors, 1 process, before : {a_first:10,.0f} samples/s  ({rows_a:,} rows)", flush=True)
    measured = []
    for loader in [x.strip() for x in args.loaders.split(",") if x.strip()]:
        b, wait_b, wall_b = full_path(cfg, lake, 1, loader)
        c, wait_c, wall_c = full_path(cfg, lake, 2, loader)
        measured.append((loader, b, c))
        print(f"(b) {loader:9s} full path, 1 process    : {b:10,.0f} samples/s  (waiting for data "
              f"{wait_b:.1%} of the time; launch wall {wall_b:.0f}s)", flush=True)
        print(f"(c) {loader:9s} full path, 2 processes  : {c:10,.0f} samples/s  (waiting for data "
              f"{wait_c:.1%} of the time; launch wall {wall_c:.0f}s)", flush=True)
    # (a) again after the launches: one measurement can catch a slow moment of the machine; the
    # higher of the two is the baseline, so the ratio b/a is the conservative one.
    a_last, _ = in_memory(spec, cfg, steps_cap=rows // args.batch_size)
    a = max(a_first, a_last)
    print(f"(a) in-memory tensors, 1 process, after  : {a_last:10,.0f} samples/s; baseline = {a:,.0f}", flush=True)
    for loader, b, c in measured:
        print(f"    {loader:9s} b/a = {b / a:.2f}   c/b = {c / b:.2f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
