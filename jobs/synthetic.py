"""``xrec synthetic --out DIR [--day N]``: synthetic events/items/users as Parquet.

Sizes, seed and the planted structure come from the ``synthetic`` config section; the printed
``ingest`` section points ``xrec ingest`` at what was written.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from xrec_spark.ingest.synthetic import synthetic_ingest_config, write_synthetic
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder for events/, items/ and users/ (Parquet)")
    parser.add_argument("--day", type=int, default=None,
                        help="write only this day's events (0-based) to events-day-NNNN/")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_job_args(argv, "Write synthetic events with planted cross-category structure.", _arguments)
    spark = get_spark(cfg)
    paths = write_synthetic(spark, cfg.synthetic, args.out, day=args.day)
    syn = cfg.synthetic
    scope = "all days" if args.day is None else f"day {args.day}"
    print(f"synthetic data (seed {syn.seed}, {scope}; {syn.events} events in total, {syn.users} users, "
          f"{syn.items} items, {syn.categories} categories, {syn.taste_clusters} taste clusters):")
    print(f"  events: {paths.events}\n  items:  {paths.items}\n  users:  {paths.users} (ground truth)")
    section = synthetic_ingest_config(paths, syn).model_dump(mode="json", exclude_defaults=True)
    print("to ingest it, use this as the config's ingest section (it replaces the whole section):")
    print(yaml.safe_dump({"ingest": section}, sort_keys=False).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
