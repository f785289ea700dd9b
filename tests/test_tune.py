"""``xrec tune``: the search space, the best.yaml overlay, pruning from a rank, and a small
stored study on the Ciao sample that resumes and prunes."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import REPO, make_config
from xrec_spark.config import JobConfig, PrunerConfig, TrialConfig, build_config, load_config
from xrec_spark.tune.pruning import TrialReporter, open_storage
from xrec_spark.tune.space import SpaceError, apply_values, load_space, overlay, parse_space, set_args
from xrec_spark.tune.study import TrialRow, _enqueue_base, write_best

SPACE = {
    "study": "s1",
    "seed": 3,
    "space": {
        "train.phases.0.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.phases.*.epochs": {"type": "int", "low": 1, "high": 3},
        "model.id_dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "model.embedding_dim": {"type": "categorical", "choices": [16, 32]},
        "model.history_encoder": {"type": "categorical", "choices": ["mean", "attention"]},
        "features.negatives.per_positive": {"type": "int", "low": 2, "high": 8, "step": 2},
    },
}


def _space(**params) -> dict:
    return {"study": "s1", "space": params}


def test_space_accepts_float_int_log_and_categorical_and_suggests_valid_configs():
    base = JobConfig()
    space = parse_space(SPACE, base)
    assert space.seed == 3 and space.features_keys() == ["features.negatives.per_positive"]
    values = {"train.phases.0.lr": 3e-3, "train.phases.*.epochs": 2, "model.id_dropout": 0.2,
              "model.embedding_dim": 32, "model.history_encoder": "attention",
              "features.negatives.per_positive": 6}
    drawn = space.suggest(optuna.trial.FixedTrial(values))
    assert drawn == values
    cfg = apply_values(base, drawn)
    assert cfg.train.phases[0].lr == 3e-3 and [p.epochs for p in cfg.train.phases] == [2, 2, 2]
    assert cfg.train.phases[1].lr == base.train.phases[1].lr                   # untouched items stay
    assert cfg.model.history_encoder.value == "attention" and cfg.features.negatives.per_positive == 6
    assert base.model.embedding_dim == 64                                      # the base is not mutated
    # Real draws stay in range and on the log scale's support.
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    for _ in range(5):
        t = study.ask()
        v = space.suggest(t)
        assert 1e-4 <= v["train.phases.0.lr"] <= 1e-2 and v["features.negatives.per_positive"] in (2, 4, 6, 8)
        study.tell(t, 0.0)


def test_the_base_config_runs_first_once_and_only_when_the_space_holds_it():
    base = JobConfig()
    # JobConfig()'s phases have different epochs (2, 1, 1): no `train.phases.*.epochs` draw
    # reproduces them, so the base cannot be a trial of SPACE.
    values, why = parse_space(SPACE, base).base_values(base)
    assert values is None and why == "train.phases.*.epochs=[2, 1, 1] is outside its search range"
    values, why = parse_space(_space(**{"model.embedding_dim": {"type": "categorical", "choices": [16, 32]}}),
                              base).base_values(base)
    assert values is None and "model.embedding_dim=64" in why
    inside = parse_space(_space(**{"model.embedding_dim": {"type": "categorical", "choices": [32, 64]},
                                   "model.id_dropout": {"type": "float", "low": 0.0, "high": 0.3}}), base)
    assert inside.base_values(base) == ({"model.embedding_dim": 64, "model.id_dropout": 0.1}, "")
    study = optuna.create_study(direction="maximize")
    _enqueue_base(study, inside, base)
    _enqueue_base(study, inside, base)                     # queued once, not twice
    first = study.ask()
    assert inside.suggest(first) == {"model.embedding_dim": 64, "model.id_dropout": 0.1}
    assert first.user_attrs == {"base_config": True}
    study.tell(first, 0.5)
    _enqueue_base(study, inside, base)                     # the study has it: nothing queued
    second = study.ask()
    assert "base_config" not in second.user_attrs and len(study.trials) == 2
    assert not parse_space({**_space(**{"model.id_dropout": {"type": "float", "low": 0.0, "high": 0.3}}),
                            "base_trial": False}, base).base_trial


@pytest.mark.parametrize("key, spec, message", [
    ("model.embeding_dim", {"type": "int", "low": 8, "high": 64}, r"model\.embeding_dim.*unknown key 'embeding_dim'"),
    ("train.phases.7.lr", {"type": "float", "low": 1e-4, "high": 1e-2}, r"train\.phases\.7\.lr.*not an index"),
    ("train.phases.0.learning_rate", {"type": "float", "low": 1e-4, "high": 1e-2},
     r"train\.phases\.0\.learning_rate.*unknown key 'learning_rate'"),
    ("features.split.valid_fraction", {"type": "float", "low": 0.1, "high": 0.2}, r"features\.split\.valid_fraction"),
    ("train.eval_k", {"type": "int", "low": 5, "high": 20}, r"train\.eval_k.*not tunable"),
    ("model.negatives", {"type": "int", "low": 1, "high": 2}, r"model\.negatives.*unknown key"),
    ("features.negatives", {"type": "int", "low": 1, "high": 2}, r"features\.negatives: only keys under"),
    ("train.phases", {"type": "int", "low": 1, "high": 2}, r"train\.phases.*is a list"),
    ("spark.master", {"type": "categorical", "choices": ["local[1]"]}, r"spark\.master: only keys under"),
    ("model.id_dropout", {"type": "float", "low": 0.0, "high": 1.5}, r"model\.id_dropout.*1\.5.*not valid"),
    ("train.batch_size", {"type": "int", "low": 0, "high": 64, "log": True}, r"train\.batch_size.*log scale"),
    ("model.embedding_dim", {"type": "categorical", "choices": []}, r"model\.embedding_dim.*choices"),
    ("model.embedding_dim", {"type": "int", "low": 8, "high": 64, "chioces": [1]}, r"model\.embedding_dim.*chioces"),
])
def test_space_rejects_bad_keys_and_ranges_naming_the_key(key, spec, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(_space(**{key: spec}), JobConfig())


def test_space_rejects_an_unknown_top_level_key_and_the_job_exits_2(tmp_path, capsys):
    with pytest.raises(SpaceError, match="unknown top-level key.*'sampler'"):
        parse_space({**SPACE, "sampler": "grid"}, JobConfig())
    from jobs.tune import main

    bad = tmp_path / "space.yaml"
    bad.write_text(yaml.safe_dump(_space(**{"model.embeding_dim": {"type": "int", "low": 8, "high": 64}})))
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({"lakehouse": {"root": str(tmp_path / "lake")}}))
    assert main(["--config", str(config), "--space", str(bad)]) == 2
    assert "model.embeding_dim" in capsys.readouterr().err


def test_several_config_files_merge_in_order(tmp_path):
    from xrec_spark.jobargs import parse_job_args

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"model": {"embedding_dim": 8, "hidden_dim": 24},
                                 "train": {"batch_size": 32, "phases": [{"name": "pretrain"}, {"name": "freeze"}]}}))
    b.write_text(yaml.safe_dump({"model": {"embedding_dim": 12}, "train": {"phases": [{"name": "finetune"}]}}))
    cfg, _ = parse_job_args(["--config", str(a), "--config", str(b), "--set", "train.batch_size=48"], "t")
    assert (cfg.model.embedding_dim, cfg.model.hidden_dim, cfg.train.batch_size) == (12, 24, 48)
    assert [p.name for p in cfg.train.phases] == ["finetune"]      # a list in an overlay replaces the list
    assert load_config([a]) == load_config(a)


def test_best_yaml_overlay_round_trips_through_the_config_loader(tmp_path):
    base_file = REPO / "conf" / "local.yaml"
    base = load_config(base_file)
    space = load_space(REPO / "conf" / "tune" / "local.yaml", base)
    params = {"train.phases.0.lr": 0.0012, "train.phases.0.epochs": 6, "train.weight_decay": 0.01,
              "train.batch_size": 4096, "model.embedding_dim": 32, "model.id_dropout": 0.05,
              "model.min_item_count": 2, "model.history_encoder": "category_attention",
              "model.history_dropout": 0.1}
    row = TrialRow(number=4, state="COMPLETE", value=0.031, epochs=4, pruned_at=None, params=params,
                   mlflow_run_id=None)
    path, args = write_best(tmp_path / "best.yaml", base, space, row, "ndcg@10")
    want = apply_values(base, params)
    assert load_config([base_file, path]) == want                            # as a second --config
    assert load_config(base_file, args) == want                              # as a --set list
    data = yaml.safe_load(path.read_text())
    assert set(data) == {"train", "model"} and "trial" not in data["train"]
    assert overlay(want, ["model.embedding_dim"]) == {"model": {"embedding_dim": 32}}
    assert set_args({"model": {"embedding_dim": 32}}) == ["model.embedding_dim=32"]


def test_a_rank_reports_to_the_stored_study_and_is_told_to_prune(tmp_path):
    storage = str(tmp_path / "tune" / "journal.log")
    study = optuna.create_study(study_name="p", storage=open_storage(storage), direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for value in (0.5, 0.6):
        study.add_trial(optuna.trial.create_trial(params={"x": value}, distributions=dist, value=value,
                                                  intermediate_values={1: value, 2: value}))
    pruner = PrunerConfig(kind="median", startup_trials=2, warmup_epochs=0)
    good, bad = study.ask(), study.ask()
    for trial, metric, want in ((good, 0.9, False), (bad, 0.1, True)):
        cfg = TrialConfig(storage=storage, study="p", trial_id=trial._trial_id, number=trial.number, pruner=pruner)
        assert TrialReporter(cfg, total_epochs=2).should_stop(metric, epoch=1) is want
    assert study.trials[3].intermediate_values == {1: 0.1}                  # the report is in the storage
    # Warm-up: the first epochs are never pruned.
    late = study.ask()
    warm = TrialConfig(storage=storage, study="p", trial_id=late._trial_id, number=late.number,
                       pruner=PrunerConfig(kind="median", startup_trials=2, warmup_epochs=1))
    assert TrialReporter(warm, total_epochs=2).should_stop(0.1, epoch=1) is False
    with pytest.raises(ValueError, match="is trial 4, not 9"):
        TrialReporter(warm.model_copy(update={"number": 9}), total_epochs=2)


# --------------------------------------------------------------------------- end to end

TRAIN = {"num_processes": 2, "local_mode": True, "batch_size": 256, "loader": "arrow", "patience": 5, "seed": 3,
         "phases": [{"name": "pretrain", "epochs": 1, "lr": 0.01}, {"name": "freeze", "epochs": 1, "lr": 0.01},
                    {"name": "finetune", "epochs": 1, "lr": 0.005, "shared_lr_scale": 0.1}]}
E2E_SPACE = {"study": "ciao-sample", "seed": 5, "startup_trials": 2,
             "space": {"train.phases.0.lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
                       "model.embedding_dim": {"type": "categorical", "choices": [8, 16]}}}


@pytest.fixture(scope="module")
def ciao_lake(spark, tmp_path_factory) -> Path:
    from cluster_jobs import local_reference

    return local_reference(spark, tmp_path_factory.mktemp("tune") / "lakehouse")


def _run_tune(args: list[str]) -> tuple[int, str]:
    from jobs.tune import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue()


@pytest.mark.slow
def test_a_stored_study_resumes_and_prunes_on_the_ciao_sample(spark, ciao_lake, tmp_path):
    from cluster_jobs import SECTIONS
    from mlflow.tracking import MlflowClient

    from train_tables import SMALL_MODEL

    cfg = make_config(ciao_lake, **SECTIONS, model=SMALL_MODEL, train=TRAIN)
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**E2E_SPACE, "pruner": {"kind": "none"}}))
    args = ["--config", str(config), "--space", str(space)]

    code, out = _run_tune([*args, "--trials", "2", "--minutes", "30"])
    assert code == 0, out
    journal = ciao_lake / "tune" / "ciao-sample" / "journal.log"
    study = optuna.load_study(study_name="ciao-sample", storage=open_storage(str(journal)))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(len(t.intermediate_values) == 3 for t in study.trials)         # rank 0 reported every epoch
    best = max(study.trials, key=lambda t: t.value)
    assert "best trials by valid ndcg@10" in out and f"| {best.number} | {best.value:.5f} |" in out
    best_yaml = ciao_lake / "tune" / "ciao-sample" / "best.yaml"
    tuned = load_config([config, best_yaml])
    assert tuned.model.embedding_dim == best.params["model.embedding_dim"]
    assert tuned.train.phases[0].lr == pytest.approx(best.params["train.phases.0.lr"]) and tuned.train.trial is None

    client = MlflowClient(tracking_uri=f"sqlite:///{ciao_lake / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(best.user_attrs["mlflow_run_id"])
    assert run.data.tags["xrec.tune.study"] == "ciao-sample" and run.data.tags["xrec.tune.trial"] == str(best.number)
    assert run.info.run_name == f"ciao-sample-trial-{best.number:03d}"
    assert run.data.params["model.embedding_dim"] == str(best.params["model.embedding_dim"])
    curve = client.get_metric_history(run.info.run_id, "valid_ndcg_at_10")   # step 0: the run's best
    assert sorted(m.step for m in curve if m.step > 0) == [1, 2, 3]

    # An oracle trial that beat everything at every epoch: the next real trial falls below the
    # median at epoch 1 and is pruned there, on rank 0, with both ranks stopping together.
    dist = {"train.phases.0.lr": optuna.distributions.FloatDistribution(3e-3, 3e-2, log=True),
            "model.embedding_dim": optuna.distributions.CategoricalDistribution([8, 16])}
    study.add_trial(optuna.trial.create_trial(params={"train.phases.0.lr": 0.01, "model.embedding_dim": 8},
                                              distributions=dist, value=1.0,
                                              intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    space.write_text(yaml.safe_dump({**E2E_SPACE, "pruner": {"kind": "median", "startup_trials": 1,
                                                             "warmup_epochs": 0}}))
    code, out = _run_tune([*args, "--trials", "1"])
    assert code == 0, out
    study = optuna.load_study(study_name="ciao-sample", storage=open_storage(str(journal)))
    assert len(study.trials) == 4                                              # resumed: the count grows
    pruned = study.trials[3]
    assert pruned.state.name == "PRUNED" and pruned.user_attrs["pruned_at"] == 1
    assert list(pruned.intermediate_values) == [1]                            # later phases never ran
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["xrec.tune.trial"] == "3"
    assert len(client.get_metric_history(run.info.run_id, "epoch_loss")) == 1
    assert "1 pruned" in out and "3 complete" in out


@pytest.mark.slow
def test_a_trial_that_changes_features_builds_its_own_prefix_once(spark, ciao_lake):
    from cluster_jobs import SECTIONS

    from xrec_spark.tables import BRONZE_EVENTS, TRAINING_EXAMPLES, Lakehouse
    from xrec_spark.tune.features import trial_lakehouse

    base_cfg = make_config(ciao_lake, **SECTIONS)
    base = Lakehouse(spark, str(ciao_lake))
    assert trial_lakehouse(spark, base, base_cfg, apply_values(base_cfg, {"model.embedding_dim": 8})) is base
    cfg = apply_values(base_cfg, {"features.negatives.per_positive": 3})
    lake = trial_lakehouse(spark, base, base_cfg, cfg)
    assert lake.root.startswith(f"{base.root}/tune/features/")
    assert lake.read(BRONZE_EVENTS).count() == base.read(BRONZE_EVENTS).count()
    ratio = lake.read(TRAINING_EXAMPLES).where("label = 0").count() / base.read(TRAINING_EXAMPLES).where(
        "label = 0").count()
    assert 1.2 < ratio <= 1.5                                                  # 3 negatives per positive, not 2
    version = lake.version(TRAINING_EXAMPLES)
    again = trial_lakehouse(spark, base, base_cfg, cfg)
    assert again.root == lake.root and again.version(TRAINING_EXAMPLES) == version   # reused, not rebuilt
    assert base.version(TRAINING_EXAMPLES) is not None


@pytest.mark.parametrize("name", ["local", "movielens"])
def test_each_shipped_search_space_loads_against_its_config(name):
    # load_space checks every key and choice against the base config, so a space that drifts
    # from its recipe (a key gone, a choice the config refuses) fails here, not in a study.
    space = load_space(REPO / "conf" / "tune" / f"{name}.yaml", load_config(REPO / "conf" / f"{name}.yaml"))
    assert space.params
