"""Delta from ``--packages`` on the standalone cluster, as README and docs/cluster.md tell cluster
users: spark-submit with ``--packages io.delta:delta-spark_2.13:<version>`` and no ``--jars``.

Spark's Ivy resolves the artifact and its dependencies from Maven Central into a fresh folder
(no cache: see ``cluster_jobs.packages_args``), hands the jars to the executors on the workers,
and the ingest job writes the same bronze tables as local mode. The only test that reaches
past loopback: it needs Maven Central (repo1.maven.org).
"""

from __future__ import annotations

import pytest

from cluster_jobs import SECTIONS, assert_same_tables, delta_package, submit, write_job_config
from standalone import StandaloneCluster
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_ingest_with_delta_from_packages_resolves_maven_central_and_equals_local_mode(
        spark, cluster: StandaloneCluster, ciao_reference, tmp_path):
    fresh = tmp_path / "resolve"
    config = write_job_config(tmp_path / "job.yaml", tmp_path / "lakehouse", **SECTIONS)
    before = {p.name for p in cluster.log_dir.glob("worker-*/app-*")}   # apps of earlier tests
    proc = submit(cluster.master_url, "ingest", config, delta_packages=fresh)
    out = proc.stdout + proc.stderr
    assert "accepted:" in proc.stdout, out[-3000:]

    group, artifact, version = delta_package().split(":")
    # Ivy's report: both artifacts found in Maven Central (not in a local repository) and downloaded.
    for name in (artifact, "delta-storage"):
        assert f"found {group}#{name};{version} in central" in out, f"{name} not resolved from central:\n{out[-4000:]}"
    assert f"downloading https://repo1.maven.org/maven2/io/delta/{artifact}/{version}/" in out, out[-4000:]
    resolved = {p.name for p in (fresh / "ivy" / "jars").glob("*.jar")}
    assert {f"{group}_{artifact}-{version}.jar", f"{group}_delta-storage-{version}.jar"} <= resolved, resolved

    # The executor on each worker fetched the Ivy-resolved jar (the job's MERGE ran there with it;
    # the other cluster tests ship the cached files, named without the group prefix).
    jar = f"{group}_{artifact}-{version}.jar"
    for w in range(len(cluster.workers)):
        apps = [p for p in (cluster.log_dir / f"worker-{w}").glob("app-*") if p.name not in before]
        assert len(apps) == 1, f"worker {w} ran executors for {len(apps)} new applications, expected the ingest"
        assert list(apps[0].glob(f"*/{jar}")), f"the executor of {apps[0].name} on worker {w} has no {jar}"

    assert_same_tables(spark, tmp_path / "lakehouse", ciao_reference,
                       specs=(BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE))
