"""Where Spark runs and where the tables live: the ``spark`` and ``lakehouse`` sections."""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from xrec_spark.config.base import _Section


class DeltaJars(str, Enum):
    """How the JVM side of Delta Lake reaches Spark.

    ``local``: jars resolved once from Maven Central into ``jars_dir`` and passed as
    ``spark.jars`` (no network after the first run). ``packages``: ``spark.jars.packages``, for
    clusters that resolve themselves. ``provided``: the platform already has Delta (Databricks,
    or ``spark-submit --packages``).
    """

    LOCAL = "local"
    PACKAGES = "packages"
    PROVIDED = "provided"


class DeltaConfig(_Section):
    version: str = "4.0.1"
    scala_version: str = "2.13"
    jars: DeltaJars = DeltaJars.LOCAL
    jars_dir: str = ".cache/jars"


class SparkConfig(_Section):
    master: str = "local[*]"
    app_name: str = "xrec-spark"
    shuffle_partitions: int = Field(8, ge=1)
    driver_memory: str = "4g"
    # Interpreter for Python workers; None = the driver's own interpreter in local mode.
    python: str | None = None
    delta: DeltaConfig = DeltaConfig()
    conf: dict[str, str] = Field(default_factory=dict)


class LakehouseConfig(_Section):
    """Root of all Delta tables: a local folder (relative to the working directory) or a URI."""

    root: str = "lakehouse"
