"""``xrec tune``: search config keys with Optuna on the valid split; the study is stored in the
lakehouse and a rerun continues it.

    xrec tune --config conf/local.yaml --space conf/tune/local.yaml --trials 20 --minutes 60
    xrec train --config conf/local.yaml --config lakehouse/tune/ciao-local/best.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xrec_spark.config import ConfigError
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", required=True, help="search space YAML (e.g. conf/tune/local.yaml)")
    parser.add_argument("--trials", type=int, default=10, help="trials to run now (default 10; 0: only report)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-time budget; checked between trials (default: none)")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL or journal file (default: <lakehouse root>/tune/<study>/journal.log)")
    parser.add_argument("--best", default=None, help="where to write best.yaml (default: next to the journal)")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_job_args(argv, "Tune config keys with Optuna (TPE, pruning on the per-epoch valid metric).",
                               _arguments)
    from xrec_spark.tune.space import load_space
    from xrec_spark.tune.study import run_study

    try:
        space = load_space(args.space, cfg)
    except ConfigError as e:
        print(f"xrec tune: error: {e}", file=sys.stderr)
        return 2
    spark = get_spark(cfg)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    report = run_study(spark, lakehouse, cfg, space, trials=args.trials, minutes=args.minutes,
                       storage=args.storage, best_path=Path(args.best) if args.best else None)
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
