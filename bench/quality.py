"""Quality benchmark: the whole chain on one data set, then NDCG@10 / Recall@10 of every system
per slice, as the markdown of BENCHMARKS.md's Quality section.

    python bench/quality.py --config conf/local.yaml       # Ciao
    python bench/quality.py --config conf/movielens.yaml   # MovieLens-1M

One process, one SparkSession, a lakehouse of its own (``--root``, default
``lakehouse/bench-<config stem>``, git-ignored):

    ingest -> features -> train the model (the config's transfer phases) and its distilled
              student (model.distill=true: the student is a system of its own)
           -> train the baselines no_sharing (model.share_across_categories=false) and
              shared_no_transfer (model.history_encoder=none), each as ONE joint phase with
              the model's total epochs
           -> evaluate on test (popularity global / per category, ALS by the full staged search
              and EASE, both tuned on valid, the two trained baselines, the model; paired
              bootstrap differences model - baseline) -> report (<root>/report/index.md)
           -> bench/results/quality_<dataset>.json (per system and slice NDCG@10 / Recall@10 with
              interval and group count, the paired differences with their intervals, the chosen
              baseline parameters); the markdown tables are rendered from that file:

    python bench/quality.py --render bench/results/quality_ciao.json bench/results/quality_movielens.json

Every step is idempotent: ingest MERGEs, features skip unchanged inputs, a training with the same
config and inputs reuses its finished run, evaluation replaces its own eval_id. So re-running
the command after an interruption redoes only what is missing. ``--steps`` picks a subset
(``--steps evaluate,report`` re-evaluates the trained versions kept in
``<root>/bench_versions.json``). Nothing is tuned on test: ALS and EASE pick their parameters on
valid, training early-stops on valid. The ALS search and EASE grid are the library defaults
(:class:`xrec_spark.config.EvalConfig`), whatever smaller demo search the config file sets.

The chain itself is :class:`xrec_spark.pipeline.quality.QualityRun` (the registered stages plus
the trained baselines); this file turns its gold.metrics rows into the results file and tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEMS = ("popularity_global", "popularity_category", "als", "ease", "dae", "no_sharing", "shared_no_transfer",
           "autoencoder_init", "student", "model")
DATASET_OF_CONFIG = {"local": "ciao"}       # conf/<stem>.yaml -> data set name of the results file
RESULTS = REPO / "bench" / "results"
SLICES = ("warm", "cross_category", "cold_user", "cold_item", "all")


def _tuned_params(rows, system: str) -> dict:
    """The best valid point of ``system``'s tuning rows (``als[rank=..,reg=..,alpha=..]``)."""
    from xrec_spark.eval import columns as C

    grid = rows[rows[C.SYSTEM].str.startswith(f"{system}[") & (rows["split"] == "valid")]
    if grid.empty:
        return {}
    best = grid.sort_values(C.VALUE, ascending=False, kind="stable").iloc[0]
    params = dict(kv.split("=", 1) for kv in best[C.SYSTEM][len(system) + 1:-1].split(","))
    out = {k: (int(v) if v.isdigit() else float(v)) for k, v in params.items()}
    return {**out, "valid_ndcg@10": float(best[C.VALUE]), "points_tried": int(len(grid)),
            "valid_groups": int(best[C.GROUPS])}


def _metric_block(rows, metric: str, k: int, split: str) -> tuple[dict, dict]:
    """(systems: {system: {slice: {value, ci, n}}}, paired: {baseline: {slice: {diff, ci, n, verdict}}})."""
    from xrec_spark.eval import columns as C
    from xrec_spark.eval.bootstrap import is_difference, split_difference, verdict
    from xrec_spark.eval.report import is_tuning_row

    sel = rows[(rows[C.METRIC] == metric) & (rows[C.K] == k) & (rows[C.CATEGORY_NAME] == C.ALL)
               & (rows["split"] == split)]
    num = lambda v: None if v != v else round(float(v), 6)  # noqa: E731  (NaN -> null)
    systems: dict = {}
    paired: dict = {}
    for r in sel.itertuples(index=False):
        system, slice_ = getattr(r, C.SYSTEM), getattr(r, C.SLICE)
        lo, hi, n = num(getattr(r, C.CI_LOW)), num(getattr(r, C.CI_HIGH)), int(getattr(r, C.GROUPS))
        if is_difference(system):
            _, other = split_difference(system)
            said = verdict(getattr(r, C.CI_LOW), getattr(r, C.CI_HIGH))
            paired.setdefault(other, {})[slice_] = {"diff": num(getattr(r, C.VALUE)), "ci": [lo, hi], "n": n,
                                                   "verdict": said}
        elif not is_tuning_row(system):
            systems.setdefault(system, {})[slice_] = {"value": num(getattr(r, C.VALUE)), "ci": [lo, hi], "n": n}
    return systems, paired


def quality_json(rows, dataset: str, split: str, max_iter: int | None = None, k: int = 10) -> dict:
    """The results file's content from an evaluation's gold.metrics rows (pandas)."""
    from xrec_spark.eval import columns as C

    systems, paired = _metric_block(rows, C.NDCG, k, split)
    recall_systems, recall_paired = _metric_block(rows, C.RECALL, k, split)
    params = {name: _tuned_params(rows, name) for name in ("als", "ease", "dae")}
    if params["als"] and max_iter is not None:
        params["als"]["max_iter"] = max_iter
    return {"dataset": dataset, "split": split, "metric": f"ndcg@{k}", "systems": systems, "paired": paired,
            "params": {k_: v for k_, v in params.items() if v},
            f"recall@{k}": {"systems": recall_systems, "paired": recall_paired},
            "eval_id": str(rows["eval_id"].iloc[0]) if "eval_id" in rows and len(rows) else None}


def _interval(ci: list, signed: bool = False) -> str:
    if not ci or ci[0] is None:
        return ""
    f = "{:+.4f}" if signed else "{:.4f}"
    return f" [{f.format(ci[0])}, {f.format(ci[1])}]"


def render_markdown(doc: dict) -> str:
    """BENCHMARKS.md's Quality tables for one results file (never typed by hand)."""
    from xrec_spark.eval.report import MIN_GROUPS_FOR_VERDICT

    metric = doc["metric"]
    known = ("model", *[s for s in SYSTEMS if s != "model"])      # the model first, then the baselines
    order = [s for s in known if s in doc["systems"]] + sorted(set(doc["systems"]) - set(SYSTEMS))
    slices = [s for s in SLICES if any(s in doc["systems"][x] for x in order)]
    head = "| {} | " + " | ".join(slices) + " |"
    rule = "|---|" + "---|" * len(slices)
    out = [f"**{doc['dataset']}**, split {doc['split']}, all categories (micro); "
           f"value [95% bootstrap interval] (groups)", "", f"**{metric.upper()}**", "",
           head.format("system"), rule]
    for system in order:
        cells = [f"{c['value']:.4f}{_interval(c['ci'])} (n={c['n']})" if (c := doc["systems"][system].get(s))
                 else "-" for s in slices]
        out.append(f"| {system} | " + " | ".join(cells) + " |")
    out += ["", f"**model − baseline, {metric.upper()}**: paired bootstrap difference per group "
            f"[95% interval]; win / loss when the interval excludes 0", "", head.format("baseline"), rule]
    for system in [s for s in order if s in doc["paired"]]:
        cells = []
        for s in slices:
            c = doc["paired"][system].get(s)
            if c is None:
                cells.append("-")
                continue
            said = (f"too few groups (< {MIN_GROUPS_FOR_VERDICT})" if c["n"] < MIN_GROUPS_FOR_VERDICT
                    else c.get("verdict") or "no interval")
            said = f"**{said}**" if said in ("win", "loss") else said
            cells.append(f"{c['diff']:+.4f}{_interval(c['ci'], signed=True)} {said}")
        out.append(f"| {system} | " + " | ".join(cells) + " |")
    params = doc.get("params", {})
    if params:
        out += ["", "Chosen on valid: " + "; ".join(
            f"{name} " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) and k.startswith("valid") else f"{k}={v}"
                                   for k, v in p.items()) for name, p in params.items())]
    return "\n".join(out)


def write_results(rows, dataset: str, split: str, max_iter: int | None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"quality_{dataset}.json"
    path.write_text(json.dumps(quality_json(rows, dataset, split, max_iter), indent=1, sort_keys=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    from xrec_spark.pipeline.quality import STEPS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the data set's config (conf/local.yaml = Ciao)")
    parser.add_argument("--dataset", default=None, help="name in bench/results/quality_<dataset>.json "
                        "(default: ciao for conf/local.yaml, else the config's stem)")
    parser.add_argument("--render", nargs="+", metavar="JSON", default=None,
                        help="only print the markdown tables of these results files (no Spark)")
    parser.add_argument("--root", default=None, help="lakehouse root (default lakehouse/bench-<config stem>)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value for every step (the model's and the baselines')")
    args = parser.parse_args(argv)
    if args.render:
        print("\n\n".join(render_markdown(json.loads(Path(p).read_text())) for p in args.render))
        return 0
    if not args.config:
        parser.error("--config is required (unless --render)")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pyspark.sql import functions as F

    from xrec_spark.pipeline.quality import QualityRun
    from xrec_spark.tables import METRICS

    run = QualityRun(args.config, args.root or f"lakehouse/bench-{Path(args.config).stem}", args.overrides,
                     emit=lambda line: print(line, flush=True))
    try:
        lake, versions = run.run(steps)
    except ValueError as e:   # a step needing versions no earlier run kept
        raise SystemExit(str(e)) from e
    if "eval_id" in versions:
        dataset = args.dataset or DATASET_OF_CONFIG.get(Path(args.config).stem, Path(args.config).stem)
        rows = lake.read(METRICS).where(F.col("eval_id") == versions["eval_id"]).toPandas()
        path = write_results(rows, dataset, "test", run.config_with().eval.als_max_iter)
        print(f"\n## Quality ({Path(args.config).name}), eval_id `{versions['eval_id']}` ({path.relative_to(REPO)})\n")
        print(render_markdown(json.loads(path.read_text())))
    print("\nstep timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in run.timings.items())
          + f"; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
