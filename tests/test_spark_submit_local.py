"""``spark-submit jobs/ingest.py --config ...`` works like ``xrec ingest`` (local master, Delta jars
passed with --jars from the project cache, workers on the project's interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CIAO_SAMPLE, REPO, TEST_SPARK, make_config
from test_ingest_ciao import CIAO_EVENTS, pandas_hand_count
from xrec_spark.jars import ensure_delta_jars
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_QUARANTINE, Lakehouse


@pytest.mark.slow
def test_spark_submit_ingest_on_ciao_sample(spark, tmp_path):
    spark_submit = Path(sys.executable).parent / "spark-submit"
    if not spark_submit.is_file():
        pytest.fail(f"{spark_submit} not found: pyspark installs it next to the interpreter")
    jars = ensure_delta_jars(make_config(tmp_path).spark.delta)
    config = tmp_path / "ingest.yaml"
    config.write_text(yaml.safe_dump({
        "spark": {**TEST_SPARK, "master": "local[2]"}, "lakehouse": {"root": str(tmp_path / "lakehouse")},
        "ingest": {"events": {**CIAO_EVENTS, "path": str(CIAO_SAMPLE)}},
    }))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cmd = [str(spark_submit), "--master", "local[2]", "--driver-memory", "1g",
           "--jars", ",".join(str(j.resolve()) for j in jars),
           "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=2",
           "jobs/ingest.py", "--config", str(config)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    expected, accepted = pandas_hand_count(CIAO_SAMPLE)
    assert f"accepted: {len(accepted)} events ({len(accepted)} new in bronze.events)" in proc.stdout
    lakehouse = Lakehouse(spark, str(tmp_path / "lakehouse"))
    assert lakehouse.read(BRONZE_EVENTS).count() == len(accepted)
    reasons = {r["reason"]: r["count"] for r in lakehouse.read(BRONZE_QUARANTINE).groupBy("reason").count().collect()}
    assert reasons == expected
