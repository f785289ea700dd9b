"""Reading a Delta table's log directly (its ``_delta_log`` folder through the table's Hadoop file
system): the latest commit number and a commit's actions, without a Spark job. Returns None
where the log cannot be read here (Spark Connect has no JVM), so callers fall back to Delta's API.
"""

from __future__ import annotations

import json
import re
from typing import Any

from py4j.protocol import Py4JJavaError
from pyspark.sql import SparkSession

_COMMIT_FILE = re.compile(r"^(\d+)\.json$")   # 00000000000000000012.json; not .crc or checkpoints


def _log_file(spark: SparkSession, table_path: str, name: str = "") -> tuple[Any, Any] | None:
    """(Hadoop file system, path) of ``<table_path>/_delta_log/<name>``; None without a JVM."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:
        return None
    path = jvm.org.apache.hadoop.fs.Path(f"{table_path}/_delta_log/{name}".rstrip("/"))
    return path.getFileSystem(spark._jsc.hadoopConfiguration()), path


def latest_commit(spark: SparkSession, table_path: str) -> int | None:
    """The highest commit number in ``<table_path>/_delta_log`` (listed through the table's
    Hadoop file system, so any store Delta reads), or None when it cannot be listed here
    (Spark Connect has no JVM to list with) or holds no commit file."""
    try:
        found = _log_file(spark, table_path)
        statuses = found[0].listStatus(found[1]) if found else None
    except Py4JJavaError:
        return None
    numbers = [int(m.group(1)) for st in statuses or [] if (m := _COMMIT_FILE.match(st.getPath().getName()))]
    return max(numbers) if numbers else None


def commit_actions(spark: SparkSession, table_path: str, version: int) -> list[dict[str, Any]] | None:
    """The actions of commit ``version`` of the table (one JSON object per line of its log
    file: ``add``, ``commitInfo``, ...), or None when it cannot be read here (no JVM, or no
    such commit)."""
    try:
        found = _log_file(spark, table_path, f"{version:020d}.json")
        stream = found[0].open(found[1]) if found else None
    except Py4JJavaError:
        return None
    if stream is None:
        return None
    try:
        text = spark._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def commit_metrics(spark: SparkSession, table_path: str, version: int) -> dict[str, int] | None:
    """The ``operationMetrics`` of commit ``version`` (its ``commitInfo``: what DESCRIBE HISTORY
    shows) as ints, or None when the commit or its ``commitInfo`` cannot be read here."""
    info = next((a["commitInfo"] for a in commit_actions(spark, table_path, version) or [] if "commitInfo" in a), None)
    if info is None:
        return None
    return {k: int(v) for k, v in (info.get("operationMetrics") or {}).items() if str(v).lstrip("-").isdigit()}
