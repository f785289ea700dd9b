"""``xrec train``: silver tables -> a trained model, an MLflow run and a gold.runs row.

    xrec train [--config conf/local.yaml] [--set train.num_processes=2 ...] [--resume | --fresh]
    xrec train --write-spec spec.json     # then: torchrun --nproc_per_node=N -m xrec_spark.train.ddp --spec spec.json
    spark-submit jobs/train.py --config conf/cluster.yaml

A run is identified by its config and the versions of its input tables; a checkpoint of the
same run is resumed automatically (``--resume`` insists on one, ``--fresh`` ignores it).
"""

from __future__ import annotations

import argparse
import sys

from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse
from xrec_spark.train.launch import build_spec, prepare_run_dir, run_training


def _arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from this run's last checkpoint; fail when there is none")
    mode.add_argument("--fresh", action="store_true",
                      help="ignore (and remove) an existing checkpoint of this run and start over")
    parser.add_argument("--write-spec", metavar="PATH", default=None,
                        help="pin the inputs, write the TrainSpec JSON for torchrun to PATH and exit")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_job_args(argv, "Train the cross-category model with DDP through TorchDistributor.",
                               _arguments)
    resume = "require" if args.resume else "never" if args.fresh else "auto"
    spark = get_spark(cfg)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    if args.write_spec:
        spec = build_spec(cfg, lakehouse, resume=resume)
        prepare_run_dir(spec)
        print(f"wrote {spec.write(args.write_spec)} for run {spec.run_id}; run it with:\n"
              f"  torchrun --nproc_per_node={cfg.train.num_processes} -m xrec_spark.train.ddp --spec {args.write_spec}")
        return 0
    report = run_training(cfg, lakehouse, resume=resume)
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
