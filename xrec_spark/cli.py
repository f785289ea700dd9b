"""``xrec`` console script: one subcommand per job in ``jobs/``, plus ``setup-jars``.

Each subcommand calls the job module's ``main(argv)``, so ``xrec ingest ...`` and
``spark-submit jobs/ingest.py ...`` run the same code.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> module holding main(argv) -> int
COMMANDS: dict[str, str] = {
    "ingest": "jobs.ingest",
    "synthetic": "jobs.synthetic",
    "demo": "jobs.demo",
    "train": "jobs.train",
    "features": "jobs.build_features",
    "embeddings": "jobs.export_embeddings",
    "candidates": "jobs.generate_candidates",
    "nightly": "jobs.nightly",
    "evaluate": "jobs.evaluate",
    "report": "jobs.report",
    "tune": "jobs.tune",
}


def _setup_jars(argv: list[str]) -> int:
    from xrec_spark.jobargs import parse_job_args
    from xrec_spark.jars import ensure_delta_jars

    cfg, _ = parse_job_args(argv, "Resolve the Delta Lake jars from Maven Central into the project cache.")
    for jar in ensure_delta_jars(cfg.spark.delta):
        print(jar)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    names = sorted([*COMMANDS, "setup-jars"])
    if not args or args[0] in ("-h", "--help"):
        print("usage: xrec COMMAND [--config PATH] [--set section.key=value ...]\n\ncommands: "
              + ", ".join(names))
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "setup-jars":
        return _setup_jars(rest)
    if command not in COMMANDS:
        print(f"xrec: unknown command {command!r}; commands: {', '.join(names)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[command]).main(rest))


if __name__ == "__main__":
    sys.exit(main())
