"""The stage registry: its order, its listing, the layering around it, and every stage's
declared tables checked against what the job really reads and writes on a small chain."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, make_config
from source_tree import PACKAGE, module_imports
from train_tables import SMALL_MODEL
from xrec_spark.pipeline.__main__ import main as pipeline_main
from xrec_spark.pipeline.stages import STAGE_NAMES, STAGES, Context, stage, stages_until
from xrec_spark.tables import JOB_LOG, RUNS, Lakehouse, TableSpec

# Read by any stage for lineage (which model, which run), whatever it declares.
LINEAGE = {RUNS.qualified, JOB_LOG.qualified}
# Declared inputs a stage reads only in some runs, and when.
SOMETIMES = {
    ("evaluate", "silver.user_history"): "for evaluation pairs the export left without a user vector",
    ("sample", "silver.category_index"): "when some user has model candidates in a category never touched",
    ("sample", "silver.user_index"): "when some user has model candidates in a category never touched",
    ("sample", "silver.item_index"): "when some user has model candidates in a category never touched",
}


def test_stages_are_in_order_and_each_reads_what_an_earlier_one_writes():
    assert STAGE_NAMES == ("ingest", "features", "train", "embeddings", "candidates", "evaluate", "report",
                           "sample")
    written: set[str] = set()
    for s in STAGES:
        unmet = {t.qualified for t in s.inputs} - written - {t.qualified for t in s.outputs}
        assert not unmet, f"stage {s.name} reads {sorted(unmet)}, which no earlier stage writes"
        written |= {t.qualified for t in s.outputs}
    assert [s.name for s in stages_until("features")] == ["ingest", "features"]
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        stage("nope")


def test_list_prints_every_stage_with_its_tables(capsys):
    assert pipeline_main(["--list"]) == 0
    out = capsys.readouterr().out
    for s in STAGES:
        assert f"{s.name}\n" in out
    assert "  reads:  bronze.events, bronze.items\n" in out          # features
    assert "silver.training_examples" in out and "gold.metrics" in out


@pytest.mark.parametrize("package, higher", [
    ("features", ("train", "batch", "eval", "pipeline")),
    ("model", ("train", "batch", "eval", "pipeline")),
    ("ingest", ("train", "batch", "eval", "pipeline")),
    ("eval", ("pipeline",)),
    ("batch", ("pipeline",)),
    ("train", ("pipeline",)),
])
def test_no_import_from_a_lower_layer_to_a_higher_one(package, higher):
    prefixes = tuple(f"xrec_spark.{h}" for h in higher)
    for path in sorted((PACKAGE / package).rglob("*.py")):
        bad = sorted(m for m in module_imports(path) if m.startswith(prefixes))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


# ------------------------------------------------------------------------------ the contract


class RecordingLakehouse(Lakehouse):
    """A Lakehouse that notes which tables are read and written (reads of metadata, such as
    ``version``, are not reads of a table's rows and are not noted)."""

    def __init__(self, spark, root: str) -> None:
        super().__init__(spark, root)
        self.reads: set[str] = set()
        self.writes: set[str] = set()

    def read(self, spec: TableSpec, version: int | None = None):
        self.reads.add(spec.qualified)
        return super().read(spec, version)

    def files(self, spec: TableSpec, version: int | None = None) -> list[str]:
        self.reads.add(spec.qualified)
        return super().files(spec, version)

    def overwrite(self, spec: TableSpec, df, replace_where=None, job=None) -> None:
        self.writes.add(spec.qualified)
        super().overwrite(spec, df, replace_where=replace_where, job=job)

    def append(self, spec: TableSpec, df, job=None) -> None:
        self.writes.add(spec.qualified)
        super().append(spec, df, job=job)

    def merge(self, spec: TableSpec, df, keys=None, update=True, job=None) -> dict[str, int]:
        self.writes.add(spec.qualified)
        return super().merge(spec, df, keys=keys, update=update, job=job)


def _events_csv(path) -> None:
    """~200 ratings of 12 users over 3 categories and 20 days, plus one row without a user."""
    rng = np.random.default_rng(5)
    n = 200
    user, cat = rng.integers(1, 13, n), rng.integers(1, 4, n)
    item = (cat - 1) * 6 + (user % 2) * 3 + rng.integers(1, 4, n)
    ts = pd.Timestamp("2024-02-01") + pd.to_timedelta(rng.integers(0, 20 * 24 * 3600, n), unit="s")
    frame = pd.DataFrame({"user_id": [f"u{u}" for u in user], "item_id": [f"i{i}" for i in item],
                          "event_ts": ts.strftime("%Y-%m-%d %H:%M:%S"), "rating": rng.integers(3, 6, n),
                          "category": [f"c{c}" for c in cat]})
    bad = pd.DataFrame({"user_id": [""], "item_id": ["i1"], "event_ts": ["2024-02-03 10:00:00"], "rating": [5],
                        "category": ["c1"]})
    pd.concat([frame, bad]).to_csv(path, index=False)


@pytest.mark.slow
def test_every_stage_reads_and_writes_the_tables_its_job_module_declares(spark, tmp_path):
    events = tmp_path / "events.csv"
    _events_csv(events)
    columns = {"user_id": "user_id", "item_id": "item_id", "event_ts": "event_ts", "value": "rating",
               "category": "category"}
    cfg = make_config(
        tmp_path / "lakehouse",
        ingest={"events": {"path": str(events), "format": "csv", "columns": columns}},
        features={"history_length": 5, "negatives": {"per_positive": 1}, "training_files": 2},
        model=SMALL_MODEL,
        train={"num_processes": 1, "local_mode": True, "batch_size": 64, "seed": 3,
               "phases": [{"name": "finetune", "epochs": 1, "lr": 0.01}]},
        batch={"top_k": 3},
        eval={"baselines": ["popularity_category"], "bootstrap_samples": 10, "ks": [3],
              "include_candidates": True, "report_dir": str(tmp_path / "report")},
    )
    lake = RecordingLakehouse(spark, cfg.lakehouse.root)
    ctx = Context(lake, cfg, date(2024, 3, 1))
    for s in STAGES:
        existing = {t.qualified for t in s.inputs if lake.exists(t)}
        lake.reads.clear()
        lake.writes.clear()
        s.run(ctx)
        declared_in, declared_out = {t.qualified for t in s.inputs}, {t.qualified for t in s.outputs}
        undeclared = lake.reads - declared_in - declared_out - LINEAGE
        assert not undeclared, f"stage {s.name} reads {sorted(undeclared)} without declaring them"
        unread = {t for t in existing - lake.reads if (s.name, t) not in SOMETIMES}
        assert not unread, f"stage {s.name} declares {sorted(unread)} as inputs but did not read them"
        assert lake.writes - {JOB_LOG.qualified} == declared_out, f"stage {s.name} wrote {sorted(lake.writes)}"
