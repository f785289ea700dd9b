"""``python -m xrec_spark.pipeline --list``: the stages in order with the tables each reads and writes."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xrec_spark.pipeline", description=__doc__)
    parser.add_argument("--list", action="store_true", help="print the stages with their input and output tables")
    args = parser.parse_args(argv)
    if not args.list:
        parser.print_help()
        return 2
    from xrec_spark.pipeline.stages import listing

    print("\n".join(listing()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
