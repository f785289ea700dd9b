"""``xrec ingest`` / ``spark-submit jobs/ingest.py``: raw files -> bronze Delta tables.

Reads ``ingest.events`` (and ``ingest.items``) from the config, quarantines bad rows in
bronze.quarantine, MERGEs the good ones into bronze.events / bronze.items, prints the summary.
"""

from __future__ import annotations

import sys

from xrec_spark.ingest.readers import SourceReadError
from xrec_spark.ingest.run import run_ingest
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(argv, "Ingest raw events and items into the bronze Delta tables.")
    spark = get_spark(cfg)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    try:
        summary = run_ingest(spark, lakehouse, cfg)
    except SourceReadError as e:
        print(f"xrec ingest: error: {e}\nNo table was changed.", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    print(f"bronze tables under {lakehouse.root}/bronze")
    return 0


if __name__ == "__main__":
    sys.exit(main())
