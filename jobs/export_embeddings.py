"""``xrec embeddings``: the trained model's item and user x category vectors -> gold.*_embeddings.

    xrec embeddings [--config conf/local.yaml] [--model-version V] [--set batch.export_batch_size=8192]
    spark-submit jobs/export_embeddings.py --config conf/cluster.yaml

Without ``--model-version`` the latest run in gold.runs is exported. Re-running replaces that
model version's rows (replaceWhere), never duplicates them.
"""

from __future__ import annotations

import argparse
import sys

from xrec_spark.batch.export import export_embeddings
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-version", default=None, help="model_version in gold.runs (default: the latest)")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_job_args(argv, "Export item and user x category embeddings of a trained model to Delta.",
                               _arguments)
    spark = get_spark(cfg)
    lake = Lakehouse(spark, cfg.lakehouse.root)
    result = export_embeddings(lake, cfg, args.model_version)
    print(result.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
