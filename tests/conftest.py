"""Shared fixtures: one Spark+Delta session for the whole run, a fresh lakehouse per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from xrec_spark.config import JobConfig, build_config
from xrec_spark.tables import Lakehouse

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CIAO_SAMPLE = DATA / "ciao" / "sample.parquet"
CIAO_FULL = DATA / "ciao" / "ratings.parquet"
MOVIELENS = DATA / "movielens-1m"

# Small and quiet: 2 local cores, few shuffle partitions, no UI.
TEST_SPARK = {
    "master": "local[2]",
    "app_name": "xrec-spark-tests",
    "shuffle_partitions": 2,
    "driver_memory": "3g",
    "delta": {"jars_dir": str(REPO / ".cache" / "jars")},
    "conf": {
        "spark.ui.enabled": "false",
        "spark.default.parallelism": "2",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    },
}


def make_config(lakehouse_root: Path | str, **sections: dict) -> JobConfig:
    """A test JobConfig: the shared Spark settings, a lakehouse root, plus given sections."""
    data = {"spark": TEST_SPARK, "lakehouse": {"root": str(lakehouse_root)}, **sections}
    return build_config(data, origin="test")


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from xrec_spark.session import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    cfg = make_config(tmp_path_factory.mktemp("lakehouse"),
                      spark={**TEST_SPARK, "conf": {**TEST_SPARK["conf"],
                                                    "spark.sql.warehouse.dir": str(warehouse)}})
    session = get_spark(cfg)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def lakehouse_root(tmp_path) -> Path:
    return tmp_path / "lakehouse"


@pytest.fixture
def lakehouse(spark, lakehouse_root) -> Lakehouse:
    return Lakehouse(spark, str(lakehouse_root))


@pytest.fixture
def job_config(lakehouse_root) -> JobConfig:
    return make_config(lakehouse_root)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A Spark standalone master and two workers (1 core, 1 GiB each) on 127.0.0.1, shared by
    every cluster-marked test of the session (tests/standalone.py)."""
    from standalone import standalone_cluster

    with standalone_cluster(tmp_path_factory.mktemp("standalone"), workers=2, cores=1, memory="1g") as c:
        yield c


@pytest.fixture(scope="session")
def ciao_reference(spark, tmp_path_factory) -> Path:
    """Ingest + features on the Ciao sample in local mode, the reference of the cluster tests."""
    from cluster_jobs import local_reference

    return local_reference(spark, tmp_path_factory.mktemp("local") / "lakehouse")


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test (tiny ops on a 2-core machine run faster so)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
