"""The quality bench's trained systems: every one builds from each shipped data-set config."""

from __future__ import annotations

from pathlib import Path

import pytest

from xrec_spark.config import HistoryEncoderKind
from xrec_spark.pipeline.quality import TRAINED_BASELINES, QualityRun

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["local.yaml", "movielens.yaml"])
@pytest.mark.parametrize("system", sorted(TRAINED_BASELINES))
def test_every_trained_baseline_builds_from_the_shipped_configs(config, system, tmp_path):
    run = QualityRun(str(REPO / "conf" / config), str(tmp_path))
    cfg = run.config_with(*TRAINED_BASELINES[system])
    assert cfg.lakehouse.root == str(tmp_path)
    if cfg.model.history_encoder is HistoryEncoderKind.NONE:
        assert cfg.model.user_ids        # a user without a history is their id row
