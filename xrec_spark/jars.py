"""The JVM side of Delta Lake: Maven coordinates, and a project-local jar cache.

delta-spark on PyPI holds no jars. We resolve ``io.delta:delta-spark_<scala>`` and
``io.delta:delta-storage`` from Maven Central once, with Maven (``mvn dependency:copy`` on a
two-line pom), into ``DeltaConfig.jars_dir`` inside the project; every later session hands the
cached files to Spark as ``spark.jars`` and needs no network.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from xrec_spark.config import DeltaConfig

log = logging.getLogger(__name__)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>xrec-spark</groupId><artifactId>delta-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
</project>
"""


def delta_coordinates(delta: DeltaConfig) -> list[str]:
    """Maven coordinates ``group:artifact:version`` of the Delta jars Spark needs."""
    return [
        f"io.delta:delta-spark_{delta.scala_version}:{delta.version}",
        f"io.delta:delta-storage:{delta.version}",
    ]


def _jar_name(coordinate: str) -> str:
    _, artifact, version = coordinate.split(":")
    return f"{artifact}-{version}.jar"


def cached_delta_jars(delta: DeltaConfig) -> list[Path] | None:
    """The cached jar files, or None when any is missing."""
    folder = Path(delta.jars_dir)
    jars = [folder / _jar_name(c) for c in delta_coordinates(delta)]
    return jars if all(j.is_file() for j in jars) else None


def ensure_delta_jars(delta: DeltaConfig) -> list[Path]:
    """Return the Delta jars, resolving them with Maven into ``jars_dir`` on first use."""
    cached = cached_delta_jars(delta)
    if cached is not None:
        return cached
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "Delta jars are not cached in "
            f"{delta.jars_dir} and Maven (mvn) is not installed to fetch them; install Maven, "
            "or set spark.delta.jars=packages to let Spark's Ivy resolve "
            f"{', '.join(delta_coordinates(delta))}"
        )
    folder = Path(delta.jars_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_POM)
        for coordinate in delta_coordinates(delta):
            log.info("resolving %s from Maven Central", coordinate)
            cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy",
                   f"-Dartifact={coordinate}", f"-DoutputDirectory={folder.resolve()}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"Maven could not resolve {coordinate} (exit {proc.returncode}):\n"
                    f"{(proc.stdout + proc.stderr)[-2000:]}"
                )
    resolved = cached_delta_jars(delta)
    if resolved is None:
        raise RuntimeError(f"Maven finished but the Delta jars are not in {folder}")
    return resolved
