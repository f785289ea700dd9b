from pathlib import Path

import pytest

from xrec_spark.config import ConfigError, JobConfig, LossKind, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "conf").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    assert isinstance(load_config(path), JobConfig)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["train.batchsize=3"], r"train\.batchsize: unknown key \(allowed: .*batch_size"),
        (["train.batch_size=abc"], r"train\.batch_size: .*valid integer.*'abc'"),
        (["model.loss=hinge"], r"model\.loss: .*'bce', 'sampled_softmax' or 'softmax'.*'hinge'"),
        (["nosuch.key=1"], r"nosuch: unknown key"),
        (["features.split.valid_fraction=0.6", "features.split.test_fraction=0.5"], r"must be < 1"),
        (["train.batch_size"], r"expected section\.key=value"),
        (["spark.shuffle_partitions=0"], r"spark\.shuffle_partitions: .*greater than or equal to 1"),
    ],
)
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "conf" / "local.yaml", override)


def test_overrides_are_typed_and_do_not_mutate():
    base = load_config(REPO / "conf" / "local.yaml")
    changed = base.with_overrides(["model.loss=sampled_softmax", "eval.ks=[5, 10]", "train.use_gpu=true"])
    assert changed.model.loss is LossKind.SAMPLED_SOFTMAX
    assert changed.eval.ks == [5, 10]
    assert changed.train.use_gpu is True
    assert base.model.loss is LossKind.SOFTMAX   # conf/local.yaml ships the category softmax
    assert base.fingerprint() != changed.fingerprint()


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spark: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception, match="frozen"):
        cfg.train.batch_size = 3  # type: ignore[misc]
