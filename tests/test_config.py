from pathlib import Path

import pytest

from xrec_spark.config import (
    Baseline, ConfigError, DistBackend, EvalSplit, HistoryAsOf, InferenceDevice, JobConfig, LossKind, TransferPhase,
    load_config,
)

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
        # Closed choices: a value outside the enum fails at load, naming the allowed values.
        (["eval.split=train"], r"eval\.split: Input should be 'valid' or 'test' \(got 'train'\)"),
        (["eval.baselines=[als, popularity]"],
         r"eval\.baselines\.1: Input should be 'popularity_global', .* \(got 'popularity'\)"),
        (["train.backend=mpi"], r"train\.backend: Input should be 'gloo' or 'nccl' \(got 'mpi'\)"),
        (["train.phases=[{name: warmup}]"],
         r"train\.phases\.0\.name: Input should be 'pretrain', 'freeze' or 'finetune' \(got 'warmup'\)"),
        (["batch.device=tpu"], r"batch\.device: Input should be 'auto', 'cpu' or 'cuda' \(got 'tpu'\)"),
        (["features.history_as_of=week"], r"features\.history_as_of: Input should be 'event', 'day' or 'profile'"),
        (["eval.baseline_versions={ALS: v1}"], r"eval\.baseline_versions\.ALS\.\[key\]: Input should be"),
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


def test_closed_choices_read_from_yaml_strings():
    cfg = load_config(None, ["eval.split=valid", "eval.baselines=[ease, no_sharing]",
                             "eval.baseline_versions={no_sharing: v7}", "train.backend=nccl",
                             "train.phases=[{name: freeze}, {name: finetune}]", "batch.device=cpu",
                             "features.history_as_of=day"])
    assert cfg.eval.split is EvalSplit.VALID
    assert cfg.eval.baselines == [Baseline.EASE, Baseline.NO_SHARING]
    assert cfg.eval.baseline_versions == {Baseline.NO_SHARING: "v7"}
    assert cfg.train.backend is DistBackend.NCCL
    assert [p.name for p in cfg.train.phases] == [TransferPhase.FREEZE, TransferPhase.FINETUNE]
    assert cfg.batch.device is InferenceDevice.CPU
    assert cfg.features.history_as_of is HistoryAsOf.DAY
    # Text where they leave the config: log lines and records say "freeze", the dump the YAML value.
    assert f"{cfg.train.phases[0].name}" == "freeze" and cfg.train.backend == "nccl"
    dumped = cfg.model_dump(mode="json")
    assert dumped["eval"]["baseline_versions"] == {"no_sharing": "v7"}
    assert dumped["train"]["phases"][0]["name"] == "freeze"
    assert load_config(None).batch.device is InferenceDevice.AUTO


@pytest.mark.parametrize(
    ("old", "new"),
    [("batch.target_categories=[games]", "batch.categories_for_all_users"),
     ("batch.block_size=64", "batch.users_per_block"),
     ("eval.block_size=64", "eval.users_per_block")],
)
def test_renamed_keys_fail_naming_the_new_key(old, new):
    key = old.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}: renamed to {new}"):
        load_config(REPO / "conf" / "local.yaml", [old])
    section, name = new.split(".")
    assert getattr(load_config(None, [f"{new}={old.partition('=')[2]}"]), section).model_fields_set == {name}


# Checks across keys run when the config loads, so a job fails before its first step (the
# trained-baseline check used to run in evaluate after the whole ALS search).
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["eval.baselines=[als, no_sharing]"],
         r"eval: .*baselines has \['no_sharing'\] but baseline_versions has no model_version"),
        (["eval.baselines=[no_sharing, shared_no_transfer]", "eval.baseline_versions={no_sharing: v1}"],
         r"eval: .*baselines has \['shared_no_transfer'\] but baseline_versions"),
        (["eval.baselines=[als]", "eval.baseline_versions={als: v1}"],
         r"eval: .*baseline_versions has \['als'\]: only the trained baselines"),
        (["eval.baselines=[]", "eval.include_model=false"], r"eval: .*nothing to evaluate"),
        (["eval.eval_id=x' OR 1=1"], r"eval\.eval_id: .*may only hold letters, digits"),
        (["features.negatives.strategies=[]", "features.negatives.per_positive=2"],
         r"features\.negatives: .*strategies is empty but per_positive is 2"),
    ],
)
def test_cross_key_checks_fail_at_load(override, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(REPO / "conf" / "local.yaml", override)
    assert "(got {" not in str(raised.value)   # a section-level message does not echo the section


def test_cross_key_checks_accept_the_consistent_forms():
    trained = load_config(None, ["eval.baselines=[no_sharing]", "eval.baseline_versions={no_sharing: v1}"])
    assert trained.eval.baseline_versions[Baseline.NO_SHARING] == "v1"
    assert load_config(None, ["eval.baselines=[]"]).eval.include_model is True   # the model alone
    assert load_config(None, ["eval.baselines=[]", "eval.include_model=false",
                              "eval.include_candidates=true"]).eval.baselines == []
    assert load_config(None, ["features.negatives.strategies=[]",
                              "features.negatives.per_positive=0"]).features.negatives.strategies == []
