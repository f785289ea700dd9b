"""Quality benchmark: the whole chain on one data set, then NDCG@10 / Recall@10 of every system
per slice, as the markdown table of BENCHMARKS.md's Quality section.

    python bench/quality.py --config conf/local.yaml       # Ciao
    python bench/quality.py --config conf/movielens.yaml   # MovieLens-1M

Runs the job entry points in order, in one process (one SparkSession), on a lakehouse of its
own (``--root``, default ``lakehouse/bench-<config name>``):

    ingest -> features -> train (model) -> train (baselines: no sharing; shared without
    transfer/history) -> embeddings -> evaluate (test split; ALS tuned on valid) -> report

``--steps`` picks a subset (e.g. ``--steps ingest,features,evaluate --no-model`` gives the
popularity and ALS rows only); the model versions trained by earlier invocations are kept in
``<root>/bench_versions.json``. Nothing is tuned on the test split: ALS picks its grid point
on valid, training early-stops on valid.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = ("ingest", "features", "train", "baselines", "export", "evaluate", "report")
# Baselines trained by the training job, as config overrides of the main model's config.
TRAINED_BASELINES: dict[str, list[str]] = {
    "no_sharing": ["model.share_across_categories=false", "model.history_encoder=none"],
    "shared_no_transfer": ["model.history_encoder=none"],
}
# "A single phase": one joint phase over every category (finetune trains sources and targets,
# shared parts at full learning rate) with the epoch and step budget of the default transfer
# schedule (2 pretrain + 1 freeze + 1 finetune epochs, each the same number of steps).
SINGLE_PHASE = "train.phases=[{name: finetune, epochs: 4, lr: 0.002, shared_lr_scale: 1.0}]"


def _job(module: str):
    try:
        return importlib.import_module(module).main
    except ModuleNotFoundError as e:
        raise SystemExit(f"bench/quality.py: {module} is not available ({e}); "
                         "run the steps that exist with --steps") from e


def _run(step: str, module: str, args: list[str]) -> float:
    print(f"\n=== {step}: {module} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    code = _job(module)(args)
    if code != 0:
        raise SystemExit(f"{step} failed with exit code {code}")
    took = time.perf_counter() - start
    print(f"=== {step} done in {took:.0f} s", flush=True)
    return took


def _latest_model_version(config: str, overrides: list[str]) -> str:
    from xrec_spark.batch.lineage import model_run
    from xrec_spark.config import load_config
    from xrec_spark.session import get_spark
    from xrec_spark.tables import Lakehouse

    cfg = load_config(config, overrides)
    return model_run(Lakehouse(get_spark(cfg), cfg.lakehouse.root)).model_version


def quality_table(config: str, overrides: list[str]) -> str:
    """Markdown: NDCG@10 and Recall@10 per system and slice of the latest evaluation."""
    from pyspark.sql import functions as F

    from xrec_spark.config import load_config
    from xrec_spark.eval import columns as C
    from xrec_spark.eval.report import latest_eval_id, summary_table
    from xrec_spark.session import get_spark
    from xrec_spark.tables import METRICS, Lakehouse

    cfg = load_config(config, overrides)
    lake = Lakehouse(get_spark(cfg), cfg.lakehouse.root)
    eval_id = latest_eval_id(lake)
    rows = lake.read(METRICS).where(F.col("eval_id") == eval_id).toPandas()
    parts = [f"eval_id `{eval_id}`, split {cfg.eval.split}, value [95% CI] (groups)"]
    for metric, label in ((C.NDCG, "NDCG@10"), (C.RECALL, "Recall@10")):
        parts += ["", f"**{label}**", "", summary_table(rows, metric, 10, cfg.eval.split)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--root", default=None, help="lakehouse root (default lakehouse/bench-<config stem>)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    parser.add_argument("--no-model", action="store_true", help="evaluate baselines only (popularity, ALS)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    root = args.root or f"lakehouse/bench-{Path(args.config).stem}"  # lakehouse/ is git-ignored
    base = [f"lakehouse.root={root}", f"eval.report_dir={root}/report", *args.overrides]
    sets = [x for o in base for x in ("--set", o)]
    common = ["--config", args.config, *sets]
    timings: dict[str, float] = {}
    # model_version of each trained system, kept beside the lakehouse so that steps can be run
    # in separate invocations (e.g. the long trainings first, evaluation later).
    versions_file = Path(root) / "bench_versions.json"
    versions: dict[str, str] = json.loads(versions_file.read_text()) if versions_file.is_file() else {}

    def remember(system: str, overrides: list[str]) -> None:
        versions[system] = _latest_model_version(args.config, overrides)
        versions_file.write_text(json.dumps(versions, indent=1, sort_keys=True))

    if "ingest" in steps:
        timings["ingest"] = _run("ingest", "jobs.ingest", common)
    if "features" in steps:
        timings["features"] = _run("features", "jobs.build_features", common)
    if "baselines" in steps and not args.no_model:
        for name, extra in TRAINED_BASELINES.items():
            more = [x for o in [*extra, SINGLE_PHASE] for x in ("--set", o)]
            timings[f"train {name}"] = _run(f"train {name}", "jobs.train", [*common, *more])
            remember(name, [*base, *extra, SINGLE_PHASE])
    if "train" in steps and not args.no_model:
        timings["train"] = _run("train", "jobs.train", common)
        remember("model", base)
    if "export" in steps and not args.no_model:
        version = ["--model-version", versions["model"]] if "model" in versions else []
        timings["export"] = _run("export", "jobs.export_embeddings", [*common, *version])
    if "evaluate" in steps:
        eval_sets = ["--set", "eval.include_model=" + ("false" if args.no_model else "true")]
        if not args.no_model and "model" in versions:
            eval_sets += ["--set", f"eval.model_version={versions['model']}"]
        trained = {k: v for k, v in versions.items() if k in TRAINED_BASELINES}
        if trained and not args.no_model:
            baselines = ["popularity_global", "popularity_category", "als", *sorted(trained)]
            eval_sets += ["--set", f"eval.baselines={json.dumps(baselines)}",
                          "--set", f"eval.baseline_versions={json.dumps(trained)}"]
        timings["evaluate"] = _run("evaluate", "jobs.evaluate", [*common, *eval_sets])
    if "report" in steps:
        timings["report"] = _run("report", "jobs.report", common)
    if "evaluate" in steps or "report" in steps:
        print("\n## Quality (" + Path(args.config).name + ")\n")
        print(quality_table(args.config, base))
    print("\nstep timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
