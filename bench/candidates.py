"""Benchmark: exact top-K candidate search on Spark against the hardware ceiling and Spark ALS.

    .venv/bin/python bench/candidates.py                       # 100k users x 100k items, 64 dims, top 100
    .venv/bin/python bench/candidates.py --users 20000 --items 20000 --skip-als   # a quick look

Prints, from one run on one machine:
- ``engine``: :func:`xrec_spark.ranking.spark.rank_by_vectors` (exact) on ``local[*]``, every
  (user, item) pair scored, top K written to Spark's no-op sink; items scored per second =
  users x items / wall time (broadcast, search and output included);
- ``numpy``: the raw single-process ``U @ X.T`` rate (no selection, no Spark) on blocks of
  users: the hardware ceiling the engine is compared with;
- ``als``: Spark ML ``ALSModel.recommendForAllUsers(K)`` with the same numbers of users and items
  and rank = dim (factors from a one-iteration fit, fit time not counted), same sink;
- ``faiss``: the engine in faiss mode at the default ``batch.faiss_nlist`` / ``faiss_nprobe``, its
  time and its recall against the exact top K.

Vectors are clustered (users and items drawn around shared centres, like trained two-tower
embeddings); ``--spread`` sets the noise around the centres (large = isotropic, the worst case
for an IVF index). Load averages before and after tell whether the machine was busy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xrec_spark.config import BatchConfig, build_config  # noqa: E402
from xrec_spark.ranking.spark import rank_by_vectors, search_recall  # noqa: E402
from xrec_spark.session import get_spark  # noqa: E402


def clustered(n: int, dim: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """n vectors [n, dim] float32: a random centre plus Gaussian noise of scale ``spread``."""
    pick = rng.integers(0, centres.shape[0], n)
    return (centres[pick] + spread * rng.standard_normal((n, dim))).astype(np.float32)


def numpy_ceiling(users: np.ndarray, items: np.ndarray, block: int, max_users: int) -> float:
    """Scores per second of ``U @ X.T`` in one process (all BLAS threads), over up to max_users."""
    xt = np.ascontiguousarray(items.T)
    _ = users[:256] @ xt  # warm-up: BLAS threads, page faults
    done, start = 0, time.perf_counter()
    for s in range(0, min(max_users, users.shape[0]), block):
        _ = users[s:s + block] @ xt
        done += min(block, users.shape[0] - s)
    return done * items.shape[0] / (time.perf_counter() - start)


def frame(spark, ids: np.ndarray, vectors: np.ndarray, id_col: str, partitions: int):
    pdf = pd.DataFrame({id_col: ids.astype(np.int32), "category_idx": np.ones(ids.size, dtype=np.int32),
                        "vector": list(vectors)})
    return spark.createDataFrame(pdf, f"{id_col} int, category_idx int, vector array<float>").repartition(partitions)


def timed_noop(df) -> float:
    start = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


def als_seconds(spark, n_users: int, n_items: int, rank: int, k: int, seed: int, partitions: int) -> float:
    """Wall time of recommendForAllUsers(k) on an ALS model of the given sizes (fit not counted)."""
    from pyspark.ml.recommendation import ALS

    rng = np.random.default_rng(seed)
    # every user and every item appears at least once, so both factor tables are full size
    users = np.concatenate([np.arange(n_users), rng.integers(0, n_users, n_items)])
    items = np.concatenate([rng.integers(0, n_items, n_users), np.arange(n_items)])
    ratings = spark.createDataFrame(pd.DataFrame({"user": users.astype(np.int32), "item": items.astype(np.int32),
                                                  "rating": np.ones(users.size, dtype=np.float32)}))
    model = ALS(rank=rank, maxIter=1, implicitPrefs=True, seed=seed, userCol="user", itemCol="item",
                ratingCol="rating", numUserBlocks=partitions, numItemBlocks=partitions).fit(ratings)
    return timed_noop(model.recommendForAllUsers(k))


def student_search_seconds(spark, args: argparse.Namespace, rng: np.random.Generator, cores: int) -> float:
    """Wall time of the exact search with the same users and items at ``--student-dim`` dims."""
    centres = rng.standard_normal((args.clusters, args.student_dim)).astype(np.float32)
    users = frame(spark, np.arange(1, args.users + 1), clustered(args.users, args.student_dim, centres, args.spread,
                                                                  rng), "user_idx", 2 * cores).cache()
    items = frame(spark, np.arange(1, args.items + 1), clustered(args.items, args.student_dim, centres, args.spread,
                                                                  rng), "item_idx", cores).cache()
    users.count(), items.count()
    try:
        return timed_noop(rank_by_vectors(users, items, args.k, block_size=args.block_size))
    finally:
        users.unpersist(), items.unpersist()


def main(argv: list[str] | None = None) -> int:
    defaults = BatchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--clusters", type=int, default=256)
    p.add_argument("--spread", type=float, default=0.5)
    p.add_argument("--block-size", type=int, default=defaults.users_per_block)
    p.add_argument("--nlist", type=int, default=defaults.faiss_nlist)
    p.add_argument("--nprobe", type=int, default=defaults.faiss_nprobe)
    p.add_argument("--numpy-users", type=int, default=16_384, help="users in the numpy ceiling run")
    p.add_argument("--master", default="local[*]")
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--skip-als", action="store_true")
    p.add_argument("--skip-faiss", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student-dim", type=int, default=0,
                   help="also time the exact search at this width (a distilled student's, model.student_dim "
                        "+ 1 with item biases) and print its speed-up over --dim")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)

    load_before = os.getloadavg()
    cfg = build_config({"spark": {"master": args.master, "driver_memory": args.driver_memory,
                                  "shuffle_partitions": 8, "app_name": "bench-candidates",
                                  "conf": {"spark.ui.enabled": "false",
                                           "spark.sql.execution.arrow.pyspark.enabled": "true"}}})
    spark = get_spark(cfg)
    spark.sparkContext.setLogLevel("ERROR")
    cores = spark.sparkContext.defaultParallelism
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    u = clustered(args.users, args.dim, centres, args.spread, rng)
    x = clustered(args.items, args.dim, centres, args.spread, rng)
    pairs = args.users * args.items
    out: dict[str, object] = {"users": args.users, "items": args.items, "dim": args.dim, "k": args.k,
                              "cores": cores, "os_cpus": os.cpu_count(), "load_before": load_before}

    ceiling = numpy_ceiling(u, x, 4096, args.numpy_users)
    out["numpy_scores_per_s"] = ceiling

    users_df = frame(spark, np.arange(1, args.users + 1), u, "user_idx", 2 * cores).cache()
    items_df = frame(spark, np.arange(1, args.items + 1), x, "item_idx", cores).cache()
    users_df.count(), items_df.count()
    exact = rank_by_vectors(users_df, items_df, args.k, block_size=args.block_size)
    secs = timed_noop(exact)
    # The ceiling again right after the engine, and the higher of the two counts: on a shared
    # machine the load moves between the runs, and the ratio must not flatter the engine.
    ceiling = max(ceiling, numpy_ceiling(u, x, 4096, args.numpy_users))
    out["numpy_scores_per_s"] = ceiling
    out["engine_seconds"] = secs
    out["engine_scores_per_s"] = pairs / secs
    out["engine_vs_numpy"] = pairs / secs / ceiling

    if args.student_dim:
        student = student_search_seconds(spark, args, rng, cores)
        out["student_dim"], out["student_seconds"], out["student_speedup"] = args.student_dim, student, secs / student

    if not args.skip_faiss:
        approx = rank_by_vectors(users_df, items_df, args.k, search="faiss", block_size=args.block_size,
                                 faiss_nlist=args.nlist, faiss_nprobe=args.nprobe)
        out["faiss_seconds"] = timed_noop(approx)
        # recall on a 5% sample of users (the join of 100k x 100 rows twice is the slow part)
        sample = users_df.where("user_idx % 20 = 0").cache()
        out["faiss_recall"] = search_recall(
            rank_by_vectors(sample, items_df, args.k, search="faiss", faiss_nlist=args.nlist,
                            faiss_nprobe=args.nprobe),
            rank_by_vectors(sample, items_df, args.k))
        out["faiss_nlist"], out["faiss_nprobe"] = args.nlist, args.nprobe

    if not args.skip_als:
        als = als_seconds(spark, args.users, args.items, args.dim, args.k, args.seed, 2 * cores)
        out["als_seconds"] = als
        out["als_scores_per_s"] = pairs / als
        out["engine_vs_als"] = als / secs

    out["load_after"] = os.getloadavg()
    spark.stop()
    after = out["load_after"][0]  # type: ignore[index]
    print(f"exact top-{args.k}, {args.users:,} users x {args.items:,} items x {args.dim} dims, "
          f"Spark {args.master} ({cores} cores), load avg before {load_before[0]:.1f}, after {after:.1f}")
    print(f"  numpy U @ X.T, one process     {ceiling / 1e6:10.1f} M scores/s   (ceiling: best of a run "
          "before and one after the engine)")
    print(f"  engine (exact, Spark)          {out['engine_scores_per_s'] / 1e6:10.1f} M scores/s   "
          f"{secs:7.1f} s   {out['engine_vs_numpy']:.2f} x ceiling")
    if "als_seconds" in out:
        print(f"  Spark ALS recommendForAllUsers {out['als_scores_per_s'] / 1e6:10.1f} M scores/s   "
              f"{out['als_seconds']:7.1f} s   engine is {out['engine_vs_als']:.1f} x faster")
    if "student_seconds" in out:
        print(f"  engine (exact) at {args.student_dim} dims (student)                "
              f"{out['student_seconds']:7.1f} s   {out['student_speedup']:.1f} x faster than {args.dim} dims")
    if "faiss_seconds" in out:
        print(f"  engine (faiss IVF nlist={args.nlist} nprobe={args.nprobe})           "
              f"{out['faiss_seconds']:7.1f} s   recall@{args.k} vs exact {out['faiss_recall']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
