"""``xrec tune``'s driver: the stored study, the objective (one training run per trial) and
the result (a table of the best trials and a ``best.yaml`` overlay).

- **Storage**: an Optuna journal file at ``<lakehouse root>/tune/<study>/journal.log`` (or
  any Optuna storage URL). Rerunning with the same space continues the same study: earlier
  trials inform the TPE sampler, whose seed is the space's seed plus the trials so far (so a
  resumed study does not redraw its first random points). A trial an earlier invocation left
  RUNNING (killed) is marked FAIL on start; one ``xrec tune`` per study at a time.
- **Objective**: the trial's values on the base config, ``train.trial`` pointing the ranks at
  the study (rank 0 reports each epoch's valid NDCG@k and stops when the pruner says so,
  :mod:`xrec_spark.tune.pruning`), then the ordinary ``run_training`` (MLflow run, gold.runs
  row). The trial's value is the run's best valid NDCG@k; a pruned run becomes a PRUNED trial.
  The test split is never read: training validates on the valid split only.
- **Budget**: ``trials`` more trials and ``minutes`` of wall time, checked between trials
  (a trial that has started runs to its end or its pruning).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
import yaml
from pyspark.sql import SparkSession

from xrec_spark.config import JobConfig
from xrec_spark.tables import Lakehouse
from xrec_spark.train.launch import TrainingFailedError, run_training
from xrec_spark.tune.features import trial_lakehouse
from xrec_spark.tune.pruning import build_pruner, open_storage
from xrec_spark.tune.space import SearchSpace, apply_values, overlay, set_args

log = logging.getLogger(__name__)

STUDY_TAG, TRIAL_TAG = "xrec.tune.study", "xrec.tune.trial"


def tune_dir(lake: Lakehouse, study: str) -> Path:
    """``<lakehouse root>/tune/<study>``: the study's journal and its best.yaml."""
    if urlparse(lake.root).scheme not in ("", "file"):
        raise ValueError(f"lakehouse.root {lake.root!r} is not a local path: the study journal needs a file "
                         "system; pass --storage with an Optuna database URL (e.g. postgresql://...)")
    return Path(lake.root) / "tune" / study


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    value: float | None
    epochs: int
    pruned_at: int | None
    params: dict[str, Any]
    mlflow_run_id: str | None


@dataclass(frozen=True)
class StudyReport:
    """What ``xrec tune`` prints: counts, the best trials, where best.yaml is."""

    study: str
    storage: str
    metric: str
    ran: int
    seconds: float
    counts: dict[str, int]
    best: list[TrialRow]
    best_yaml: Path | None
    best_set: list[str] = field(default_factory=list)

    def format(self) -> str:
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.counts.items()))
        lines = [f"study {self.study} ({self.storage}): {self.ran} trial(s) run now in {self.seconds / 60:.1f} min; "
                 f"{sum(self.counts.values())} in the study ({counts})"]
        if self.best:
            keys = list(self.best[0].params)
            lines.append(f"best trials by valid {self.metric}:")
            lines.append("| trial | valid " + self.metric + " | epochs | " + " | ".join(keys) + " | mlflow run |")
            lines.append("|---" * (4 + len(keys)) + "|")
            for r in self.best:
                cells = [_cell(r.params.get(k)) for k in keys]
                lines.append(f"| {r.number} | {r.value:.5f} | {r.epochs} | " + " | ".join(cells)
                             + f" | {r.mlflow_run_id or ''} |")
        else:
            lines.append("no completed trial yet")
        if self.best_yaml is not None:
            lines.append(f"best.yaml:  {self.best_yaml}  (use as a second --config, or --set:)")
            lines.append("  " + " ".join(f"--set '{a}'" for a in self.best_set))
        return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Objective:
    """One training run per trial (callable for ``study.optimize``)."""

    def __init__(self, spark: SparkSession, lake: Lakehouse, cfg: JobConfig, space: SearchSpace, storage: str,
                 tracking_uri: str) -> None:
        self.spark, self.lake, self.cfg, self.space = spark, lake, cfg, space
        self.storage, self.tracking_uri = storage, tracking_uri
        self.metric = f"valid_ndcg@{cfg.train.eval_k}"

    def __call__(self, trial: optuna.trial.Trial) -> float:
        values = self.space.suggest(trial)
        cfg = apply_values(self.cfg, values)
        lake = trial_lakehouse(self.spark, self.lake, self.cfg, cfg)
        train = cfg.train.model_dump(mode="json")
        train.update(tracking_uri=self.tracking_uri,
                     trial={"storage": self.storage, "study": self.space.study, "trial_id": trial._trial_id,
                            "number": trial.number, "pruner": self.space.pruner.model_dump(mode="json")})
        data = cfg.model_dump(mode="json")
        data.update(train=train, lakehouse={"root": lake.root})
        cfg = type(cfg).model_validate(data)
        log.info("trial %d of study %s: %s", trial.number, self.space.study,
                 ", ".join(f"{k}={_cell(v)}" for k, v in values.items()))
        report = run_training(cfg, lake)
        result = report.result
        _tag(self.tracking_uri, report.mlflow_run_id, self.space.study, trial.number)
        history = result.history
        pruned = bool(history and history[-1].get("pruned"))
        for key, value in {"mlflow_run_id": report.mlflow_run_id, "run_id": result.run_id,
                           "model_version": result.model_version, "epochs": len(history),
                           "lakehouse": lake.root, "pruned_at": len(history) if pruned else None}.items():
            trial.set_user_attr(key, value)
        best = result.metrics.get(self.metric)
        if pruned:
            last = history[-1]
            log.info("trial %d PRUNED at epoch %d (phase %s, epoch %d of it): valid %s %.5f; best so far %s",
                     trial.number, len(history), last["phase"], last["epoch"], last["metric_name"],
                     last["valid_metric"], f"{best:.5f}" if best is not None else "none")
            raise optuna.TrialPruned(f"pruned at epoch {len(history)}")
        if best is None or math.isnan(best):
            raise TrainingFailedError(f"trial {trial.number}: the run has no {self.metric} (no validation groups?)")
        return float(best)


def _tag(uri: str, run_id: str, study: str, number: int) -> None:
    """Name the trial's MLflow run ``<study>-trial-<n>`` and tag it with the study and trial."""
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.set_tag(run_id, STUDY_TAG, study)
    client.set_tag(run_id, TRIAL_TAG, str(number))
    client.update_run(run_id, name=f"{study}-trial-{number:03d}")


def _fail_stale(study: optuna.Study, store: optuna.storages.BaseStorage) -> None:
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log.warning("trial %d of study %s was left RUNNING by an earlier invocation: marking it FAIL",
                    t.number, study.study_name)
        store.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def _enqueue_base(study: optuna.Study, space: SearchSpace, cfg: JobConfig) -> None:
    """Queue the base config's values as the next trial unless the study already ran them."""
    if not space.base_trial:
        return
    values, why = space.base_values(cfg)
    if values is None:
        log.info("study %s: no base-config trial (%s)", space.study, why)
        return
    done = any(t.params == values for t in study.get_trials(deepcopy=False)
               if t.state is not optuna.trial.TrialState.FAIL)
    if done:
        return
    log.info("study %s: the base config's own values run as the next trial: %s", space.study,
             ", ".join(f"{k}={_cell(v)}" for k, v in values.items()))
    study.enqueue_trial(values, user_attrs={"base_config": True}, skip_if_exists=True)


def _rows(study: optuna.Study, top: int) -> list[TrialRow]:
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None]
    done.sort(key=lambda t: (-float(t.value), t.number))
    return [TrialRow(t.number, t.state.name, float(t.value), int(t.user_attrs.get("epochs", 0)),
                     t.user_attrs.get("pruned_at"), dict(t.params), t.user_attrs.get("mlflow_run_id"))
            for t in done[:top]]


def write_best(path: Path, cfg: JobConfig, space: SearchSpace, row: TrialRow, metric: str) -> tuple[Path, list[str]]:
    """best.yaml: the overlay of the best trial's values (a second ``--config`` on the base)."""
    best_cfg = apply_values(cfg, {k: v for k, v in row.params.items() if k in space.params})
    data = overlay(best_cfg, list(space.params))
    head = (f"# xrec tune: best trial {row.number} of study {space.study}, valid {metric} {row.value:.5f}\n"
            f"# use: xrec train --config <base config> --config {path.name}\n")
    if space.features_keys():
        head += "# it sets features.*: run `xrec features` with it before `xrec train`\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(head + yaml.safe_dump(data, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path, set_args(data)


def run_study(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, space: SearchSpace, trials: int | None,
              minutes: float | None, storage: str | None = None, best_path: Path | None = None) -> StudyReport:
    """Create or continue the study, run up to ``trials`` trials within ``minutes``, report."""
    from xrec_spark.train import tracking

    if trials is not None and trials < 0:
        raise ValueError(f"trials must be >= 0; got {trials}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be > 0; got {minutes}")
    where = storage or str(tune_dir(lake, space.study) / "journal.log")
    uri = tracking.tracking_uri(cfg, lake)   # every trial logs to the base lakehouse's store
    total_epochs = sum(p.epochs for p in cfg.train.phases)
    store = open_storage(where)
    probe = optuna.create_study(study_name=space.study, storage=store, direction="maximize", load_if_exists=True)
    _fail_stale(probe, store)
    before = len(probe.trials)
    sampler = optuna.samplers.TPESampler(seed=space.seed + before, n_startup_trials=space.startup_trials)
    study = optuna.load_study(study_name=space.study, storage=store, sampler=sampler,
                              pruner=build_pruner(space.pruner, total_epochs))
    log.info("study %s in %s: %d earlier trial(s); running up to %s more within %s min", space.study, where, before,
             trials if trials is not None else "unlimited", minutes if minutes is not None else "unlimited")
    if trials != 0:
        _enqueue_base(study, space, cfg)
    objective = Objective(spark, lake, cfg, space, where, uri)
    t0 = time.perf_counter()
    if trials != 0:
        study.optimize(objective, n_trials=trials, timeout=None if minutes is None else minutes * 60,
                       catch=(TrainingFailedError, FloatingPointError), gc_after_trial=True)
    seconds = time.perf_counter() - t0
    all_trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in all_trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = _rows(study, space.top)
    best_yaml, best_set = None, []
    if best:
        best_yaml, best_set = write_best(best_path or tune_dir(lake, space.study) / "best.yaml", cfg, space, best[0],
                                         objective.metric.removeprefix("valid_"))
    return StudyReport(study=space.study, storage=where, metric=objective.metric.removeprefix("valid_"),
                       ran=len(all_trials) - before, seconds=seconds, counts=counts, best=best,
                       best_yaml=best_yaml, best_set=best_set)
