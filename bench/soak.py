"""Soak: the nightly chain (jobs/nightly.py's library call) for N consecutive synthetic days.

    .venv/bin/python bench/soak.py                     # 7 nights, new users/items/category from night 4
    .venv/bin/python bench/soak.py --days 3 --events-per-day 500

First a backfill: the ``--history-days`` days before the first night are ingested at once (a
nightly deployment starts from history: the temporal split works in whole days, so a lakehouse
holding a single day has no train rows and nothing to train on). Then night n (0-based) ingests
the synthetic generator's events of its own day (``write_synthetic(day=history + n)``) and runs
the nightly chain for that date; from night ``--new-category-day`` (0-based, default 3 = the 4th
night) a new category with new users and items appears. After each night it checks, and prints:

- indexes stable: every (natural id -> dense idx) of the day before is unchanged;
- no duplicate keys in any gold table (keys as declared in tables.py);
- versions advance at most once per step: a table written by a step that ran gains one version
  (two when the step created it: the empty create, then the write), a skipped step adds none;
- candidates exist for the new category (today's run_date) once it has appeared;
- the night the new category appears, the train step adapts the model by the few-shot path
  (``batch.few_shot``: a new head from the nearest categories, a new model version whose
  parent is the trained model) instead of retraining.

Exit status 0 when every check of every day held, 1 otherwise. Writes under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from xrec_spark.pipeline.nightly import run_nightly  # noqa: E402
from xrec_spark.pipeline.stages import stage  # noqa: E402
from xrec_spark.config import JobConfig, build_config  # noqa: E402
from xrec_spark.ingest.run import run_ingest  # noqa: E402
from xrec_spark.ingest.synthetic import SyntheticPaths, synthetic_ingest_config, write_synthetic  # noqa: E402
from xrec_spark.session import get_spark  # noqa: E402
from xrec_spark.tables import (  # noqa: E402
    ALL_TABLES, CANDIDATES, CATEGORY_INDEX, ITEM_INDEX, USER_INDEX, Lakehouse, TableSpec,
)

INDEXES = ((USER_INDEX, "user_id", "user_idx"), (ITEM_INDEX, "item_id", "item_idx"),
           (CATEGORY_INDEX, "category", "category_idx"))
GOLD = tuple(s for s in ALL_TABLES if s.layer == "gold" and s.keys)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--events-per-day", type=int, default=1500)
    p.add_argument("--new-category-day", type=int, default=3)
    p.add_argument("--history-days", type=int, default=9,
                   help="days of events ingested before the first night (9: train 8 days, valid 1, test 1)")
    p.add_argument("--work", default="/tmp/xrec-soak")
    p.add_argument("--start", type=date.fromisoformat, default=date(2024, 5, 1))
    return p.parse_args(argv)


def _config(root: Path, args: argparse.Namespace):
    days = args.history_days + args.days
    return build_config({
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "3g",
                  "delta": {"jars_dir": str(REPO / ".cache" / "jars")},
                  "conf": {"spark.ui.enabled": "false", "spark.default.parallelism": "2"}},
        "lakehouse": {"root": str(root / "lakehouse")},
        "synthetic": {"users": 300, "items": 400, "categories": 4, "events": args.events_per_day * days,
                      "days": days, "start": (args.start - timedelta(days=args.history_days)).isoformat(),
                      "files": 1, "new_category_day": args.history_days + args.new_category_day,
                      "new_category_items": 40,
                      "new_category_users": 30, "new_category_share": 0.3},
        "features": {"history_length": 5, "negatives": {"per_positive": 1}, "training_files": 2},
        "model": {"embedding_dim": 8, "hidden_dim": 16, "hash_buckets": 1024, "max_tokens": 8},
        "train": {"num_processes": 1, "batch_size": 256, "checkpoint_dir": str(root / "checkpoints"),
                  "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                  "phases": [{"name": "pretrain", "epochs": 1}]},
        "batch": {"top_k": 5, "retrain_every_days": 7, "drift_threshold": 0.5},
        "eval": {"baselines": ["popularity_category"], "bootstrap_samples": 20, "ks": [5]},
    }, origin="soak")


def _index_map(lake: Lakehouse, spec: TableSpec, key: str, idx: str) -> dict[str, int]:
    return {r[key]: r[idx] for r in lake.read(spec).select(key, idx).collect()} if lake.exists(spec) else {}


def _duplicate_keys(lake: Lakehouse) -> dict[str, int]:
    out = {}
    for spec in GOLD:
        if lake.exists(spec):
            df = lake.read(spec)
            dupes = df.count() - df.select(*spec.keys).distinct().count()
            if dupes:
                out[spec.qualified] = dupes
    return out


def _version_problems(before: dict[str, int], after: dict[str, int], steps) -> list[str]:
    problems = []
    for step in steps:
        for spec in stage(step.step).outputs:
            old, new = before.get(spec.qualified), after.get(spec.qualified)
            allowed = ({old} if not step.ran else {old, old + 1}) if old is not None else {None, 0, 1}
            if new not in allowed:
                problems.append(f"{step.step}: {spec.qualified} {old} -> {new} (ran={step.ran})")
    return problems


def _few_shot_night(steps, checks: dict[str, object]) -> bool:
    """On the new category's night the train step took the few-shot path (this soak's
    schedule and drift settings do not retrain that night)."""
    train = next(s for s in steps if s.step == "train").summary
    few = train.get("few_shot")
    checks["few-shot"] = ({"parent": few["parent"], "categories": few["categories"], "items": few.get("items")} if few
                          else f"no: {train.get('reason') or 'model reused'}")
    return bool(few)


def fresh_lake(work: Path, make_config: Callable[[Path], JobConfig]) -> tuple[JobConfig, SparkSession, Lakehouse]:
    """An emptied ``work`` folder, the config ``make_config`` gives for it, its Spark session
    (errors only in the log) and lakehouse: the start of this bench and bench/few_shot.py."""
    shutil.rmtree(work, ignore_errors=True)
    cfg = make_config(work)
    spark = get_spark(cfg)
    spark.sparkContext.setLogLevel("ERROR")
    return cfg, spark, Lakehouse(spark, cfg.lakehouse.root)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    work = Path(args.work)
    cfg, spark, lake = fresh_lake(work, lambda root: _config(root, args))
    new_category = f"cat{cfg.synthetic.categories + 1:02d}"
    ok, report = True, []
    previous = {spec.qualified: {} for spec, _, _ in INDEXES}
    landing = str(work / "landing")
    if args.history_days:
        clock = time.perf_counter()
        for d in range(args.history_days):
            write_synthetic(spark, cfg.synthetic, landing, day=d)
        # Every history day's events; the items folder of the last one (each holds all items so far).
        history = SyntheticPaths(f"{landing}/events-day-*", f"{landing}/items-day-{args.history_days - 1:04d}",
                                 f"{landing}/users-day-{args.history_days - 1:04d}")
        backfill = run_ingest(spark, lake, cfg.model_copy(
            update={"ingest": synthetic_ingest_config(history, cfg.synthetic, cfg.ingest)}))
        print(json.dumps({"backfill_days": args.history_days, "events": backfill.inserted_events,
                          "seconds": round(time.perf_counter() - clock, 1)}), flush=True)
    for day in range(args.days):  # night index, 0-based (printed as day 1..N)
        run_date = args.start + timedelta(days=day)
        paths = write_synthetic(spark, cfg.synthetic, landing, day=args.history_days + day)
        day_cfg = cfg.model_copy(update={"ingest": synthetic_ingest_config(paths, cfg.synthetic, cfg.ingest)})
        before = lake.versions(ALL_TABLES)
        clock = time.perf_counter()
        result = run_nightly(lake, day_cfg, run_date)
        seconds = time.perf_counter() - clock
        after = lake.versions(ALL_TABLES)
        checks: dict[str, object] = {}
        changed = {}
        for spec, key, idx in INDEXES:
            now = _index_map(lake, spec, key, idx)
            changed[spec.qualified] = sum(1 for k, v in previous[spec.qualified].items() if now.get(k) != v)
            checks[f"{spec.name} size"] = len(now)
            previous[spec.qualified] = now
        checks["indexes stable"] = not any(changed.values())
        dupes = _duplicate_keys(lake)
        checks["no duplicate gold keys"] = not dupes
        problems = _version_problems(before, after, result.steps)
        checks["versions once per step"] = not problems
        cat_idx = previous[CATEGORY_INDEX.qualified].get(new_category)
        if cat_idx is not None and lake.exists(CANDIDATES):
            n = lake.read(CANDIDATES).where((F.col("run_date") == F.lit(run_date))
                                            & (F.col("category_idx") == cat_idx)).count()
            checks[f"candidates for {new_category}"] = n
            day_ok_new = n > 0
        else:
            day_ok_new = day < args.new_category_day  # it must have appeared by then
            checks[f"candidates for {new_category}"] = "not yet" if day_ok_new else "category missing"
        few_ok = True
        if cat_idx is not None and day == args.new_category_day:
            few_ok = _few_shot_night(result.steps, checks)
        day_ok = checks["indexes stable"] and not dupes and not problems and day_ok_new and few_ok
        ok = ok and day_ok
        line = {"day": day + 1, "run_date": run_date.isoformat(), "seconds": round(seconds, 1),
                "model": result.model_version, "steps_ran": [s.step for s in result.steps if s.ran],
                **checks, "ok": day_ok}
        if dupes or problems or any(changed.values()):
            line["details"] = {"duplicates": dupes, "versions": problems, "index_changes": changed}
        report.append(line)
        print(json.dumps(line, default=str), flush=True)
    print(f"soak: {args.days} days, {'ALL CHECKS HELD' if ok else 'SOME CHECKS FAILED'}")
    spark.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
