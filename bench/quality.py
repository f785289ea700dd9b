"""Quality benchmark: the whole chain on one data set, then NDCG@10 / Recall@10 of every system
per slice, as the markdown of BENCHMARKS.md's Quality section.

    python bench/quality.py --config conf/local.yaml       # Ciao
    python bench/quality.py --config conf/movielens.yaml   # MovieLens-1M

One process, one SparkSession, a lakehouse of its own (``--root``, default
``lakehouse/bench-<config stem>``, git-ignored):

    ingest -> features -> train the model (the config's transfer phases)
           -> train the baselines no_sharing (model.share_across_categories=false) and
              shared_no_transfer (model.history_encoder=none), each as ONE joint phase with
              the model's total epochs
           -> evaluate on test (popularity global / per category, ALS tuned on valid, the two
              trained baselines, the model) -> report (<root>/report/index.md)

Every step is idempotent: ingest MERGEs, features skip unchanged inputs, a training with the same
config and inputs reuses its finished run, evaluation replaces its own eval_id. So re-running
the command after an interruption redoes only what is missing. ``--steps`` picks a subset
(``--steps evaluate,report`` re-evaluates the trained versions kept in
``<root>/bench_versions.json``). Nothing is tuned on test: ALS picks its grid point on valid,
training early-stops on valid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = ("ingest", "features", "train", "baselines", "evaluate", "report")
# Baselines trained by the training job, as config overrides of the model's config.
TRAINED_BASELINES: dict[str, list[str]] = {
    "no_sharing": ["model.share_across_categories=false"],
    "shared_no_transfer": ["model.history_encoder=none"],
}
SYSTEMS = ("popularity_global", "popularity_category", "als", "no_sharing", "shared_no_transfer", "model")


def single_phase(cfg) -> str:
    """One joint phase (finetune: every category, shared parts at full rate) with the epochs of
    all the config's phases together and its first phase's learning rate: the transfer schedule's
    budget without the transfer."""
    epochs = sum(p.epochs for p in cfg.train.phases)
    return f"train.phases=[{{name: finetune, epochs: {epochs}, lr: {cfg.train.phases[0].lr}, shared_lr_scale: 1.0}}]"


def _timed(name: str, fn):
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    out = fn()
    took = time.perf_counter() - start
    print(f"=== {name} done in {took:.0f} s", flush=True)
    return out, took


def quality_markdown(rows, split: str, k: int = 10) -> str:
    """NDCG@k and Recall@k tables (system x slice) and the model against the best baseline."""
    from xrec_spark.eval import columns as C
    from xrec_spark.eval.report import summary_table, verdicts

    parts = [f"value [95% bootstrap interval] (groups), split {split}, all categories (micro)"]
    for metric, label in ((C.NDCG, f"NDCG@{k}"), (C.RECALL, f"Recall@{k}")):
        parts += ["", f"**{label}**", "", summary_table(rows, metric, k, split)]
    parts += ["", f"**Model vs best baseline, NDCG@{k}**", "", verdicts(rows, C.NDCG, k, split)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--root", default=None, help="lakehouse root (default lakehouse/bench-<config stem>)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value for every step (the model's and the baselines')")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from xrec_spark.config import load_config
    from xrec_spark.eval.evaluate import evaluate
    from xrec_spark.eval.report import build_report
    from xrec_spark.features.build import build_features
    from xrec_spark.session import get_spark
    from xrec_spark.tables import Lakehouse
    from xrec_spark.train.launch import run_training

    root = args.root or f"lakehouse/bench-{Path(args.config).stem}"
    base = [f"lakehouse.root={root}", f"eval.report_dir={root}/report", *args.overrides]
    cfg = load_config(args.config, base)
    lake = Lakehouse(get_spark(cfg), cfg.lakehouse.root)
    Path(root).mkdir(parents=True, exist_ok=True)
    # model_version of each trained system, so that `--steps evaluate,report` finds them later.
    versions_file = Path(root) / "bench_versions.json"
    versions: dict[str, str] = json.loads(versions_file.read_text()) if versions_file.is_file() else {}
    timings: dict[str, float] = {}

    def train(system: str, extra: list[str]) -> None:
        report, timings[f"train {system}"] = _timed(
            f"train {system} {' '.join(extra)}", lambda: run_training(load_config(args.config, [*base, *extra]), lake))
        print(report.format(), flush=True)
        versions[system] = report.result.model_version
        versions_file.write_text(json.dumps(versions, indent=1, sort_keys=True))

    if "ingest" in steps:
        from xrec_spark.ingest.run import run_ingest
        summary, timings["ingest"] = _timed("ingest", lambda: run_ingest(lake.spark, lake, cfg))
        print("\n".join(summary.lines()), flush=True)
    if "features" in steps:
        summary, timings["features"] = _timed("features", lambda: build_features(lake.spark, lake, cfg))
        print(summary.format(), flush=True)
    if "train" in steps:
        train("model", [])
    if "baselines" in steps:
        for name, extra in TRAINED_BASELINES.items():
            train(name, [*extra, single_phase(cfg)])
    if "evaluate" in steps:
        missing = [s for s in ("model", *TRAINED_BASELINES) if s not in versions]
        if missing:
            raise SystemExit(f"no trained version of {missing} in {versions_file}: run the train/baselines steps")
        trained = {k: versions[k] for k in TRAINED_BASELINES}
        eval_cfg = load_config(args.config, [
            *base, "eval.split=test", "eval.include_model=true", f"eval.model_version={versions['model']}",
            f"eval.baselines={json.dumps(['popularity_global', 'popularity_category', 'als', *trained])}",
            f"eval.baseline_versions={json.dumps(trained)}"])
        result, timings["evaluate"] = _timed("evaluate", lambda: evaluate(lake, eval_cfg))
        print(result.format(eval_cfg.eval.ks), flush=True)
        versions["eval_id"] = result.eval_id
        versions_file.write_text(json.dumps(versions, indent=1, sort_keys=True))
    if "report" in steps:
        report_cfg = load_config(args.config, [*base, *([f"eval.eval_id={versions['eval_id']}"]
                                                        if "eval_id" in versions else [])])
        result, timings["report"] = _timed("report", lambda: build_report(lake, report_cfg))
        print(result.format(), flush=True)
    if "eval_id" in versions:
        from pyspark.sql import functions as F

        from xrec_spark.tables import METRICS
        rows = lake.read(METRICS).where(F.col("eval_id") == versions["eval_id"]).toPandas()
        print(f"\n## Quality ({Path(args.config).name}), eval_id `{versions['eval_id']}`\n")
        print(quality_markdown(rows, "test"))
    print("\nstep timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + f"; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
