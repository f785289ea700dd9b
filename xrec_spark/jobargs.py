"""The one argument parser every job shares: ``--config PATH`` and repeated ``--set k=v``.

Only job entry points use it; nothing below ``jobs/`` sees argparse.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from xrec_spark.config import ConfigError, JobConfig, load_config

DEFAULT_CONFIG = "conf/local.yaml"


def parse_job_args(
    argv: list[str] | None,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[JobConfig, argparse.Namespace]:
    """Parse job arguments into the validated config and the job's own extra arguments.

    A bad config exits with status 2 and a message naming the key (argparse's convention).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", action="append", default=None,
                        help=f"YAML config (default: {DEFAULT_CONFIG} when present, else built-in defaults); "
                             "repeatable: later files are overlays merged on the earlier ones")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value; repeatable")
    parser.add_argument("--log-level", default="INFO")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    path: list[str] | None = args.config
    if path is None:
        from pathlib import Path
        path = [DEFAULT_CONFIG] if Path(DEFAULT_CONFIG).is_file() else None
    try:
        cfg = load_config(path, args.overrides)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return cfg, args
