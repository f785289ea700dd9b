"""SparkSession with Delta Lake enabled, built the same way by jobs and tests.

``configure(builder, spark_cfg)`` is a pure function builder -> builder; ``get_spark(cfg)`` adds
the one decision that depends on how we were started: under ``spark-submit`` the master, jars
and resources come from the command line, so we keep them and only add what Delta needs.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyspark.sql import SparkSession

from xrec_spark.config import DeltaJars, JobConfig, SparkConfig
from xrec_spark.jars import delta_coordinates, ensure_delta_jars

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
LOOPBACK = "127.0.0.1"
LOG4J2_PROPERTIES = Path(__file__).with_name("log4j2.properties")
DELTA_SQL_CONF = {
    "spark.sql.extensions": DELTA_EXTENSION,
    "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
}


def under_spark_submit() -> bool:
    """True when this interpreter was started by ``spark-submit`` (its JVM launched us)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _is_local(master: str) -> bool:
    return master.startswith("local")


def delta_conf(spark_cfg: SparkConfig) -> dict[str, str]:
    """Spark conf entries that enable Delta Lake, including how its jars are found."""
    conf = dict(DELTA_SQL_CONF)
    if spark_cfg.delta.jars is DeltaJars.LOCAL:
        conf["spark.jars"] = ",".join(str(p.resolve()) for p in ensure_delta_jars(spark_cfg.delta))
    elif spark_cfg.delta.jars is DeltaJars.PACKAGES:
        conf["spark.jars.packages"] = ",".join(delta_coordinates(spark_cfg.delta))
    return conf


def session_conf(spark_cfg: SparkConfig) -> dict[str, str]:
    """Every conf entry a session built from ``spark_cfg`` gets (user ``conf`` wins)."""
    conf = {
        "spark.app.name": spark_cfg.app_name,
        "spark.sql.shuffle.partitions": str(spark_cfg.shuffle_partitions),
        "spark.driver.memory": spark_cfg.driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES.as_uri()}",
        **delta_conf(spark_cfg),
    }
    if _is_local(spark_cfg.master):
        # One machine: the driver (and its in-process executors) listen on loopback only,
        # instead of whatever address the host name resolves to.
        conf["spark.driver.host"] = LOOPBACK
        conf["spark.driver.bindAddress"] = LOOPBACK
    python = spark_cfg.python or (sys.executable if _is_local(spark_cfg.master) else None)
    if python:
        # Workers must import pyarrow/pandas/torch from our virtualenv, not the system Python.
        conf["spark.pyspark.python"] = python
        conf["spark.pyspark.driver.python"] = sys.executable
    conf.update(spark_cfg.conf)
    return conf


def configure(builder: SparkSession.Builder, spark_cfg: SparkConfig) -> SparkSession.Builder:
    """Apply master and every session conf entry to ``builder``; returns it for chaining."""
    builder = builder.master(spark_cfg.master)
    for key, value in session_conf(spark_cfg).items():
        builder = builder.config(key, value)
    return builder


def get_spark(cfg: JobConfig) -> SparkSession:
    """The session for a job: the active one if any, else one built from ``cfg.spark``.

    Under ``spark-submit`` we never override what the command line set (master, jars,
    resources); we only add the Delta extension and catalog and our SQL settings.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if under_spark_submit():
        conf = {
            **DELTA_SQL_CONF,
            "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
            "spark.sql.session.timeZone": "UTC",
            **cfg.spark.conf,
        }
        builder = SparkSession.builder
        for key, value in conf.items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
    python = cfg.spark.python or (sys.executable if _is_local(cfg.spark.master) else None)
    with _worker_python(python):
        return configure(SparkSession.builder, cfg.spark).getOrCreate()


@contextmanager
def _worker_python(python: str | None) -> Iterator[None]:
    """Set PYSPARK_PYTHON while the SparkContext is created, then restore it.

    PySpark's SparkContext reads the worker interpreter from this variable once, at start;
    ``spark.pyspark.python`` alone only reaches workers launched by spark-submit.
    """
    if python is None:
        yield
        return
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = python
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYSPARK_PYTHON", None)
        else:
            os.environ["PYSPARK_PYTHON"] = previous
