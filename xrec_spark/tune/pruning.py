"""A trial's side of pruning, run by training rank 0: report each epoch's valid metric to the
Optuna study and ask whether the trial should stop.

The trainer runs in TorchDistributor (or torchrun) child processes, so this module imports
optuna and the config only, never pyspark. The child opens the study's storage itself (the
same journal file or database the driver uses), rebuilds its trial from the storage id that
``xrec tune`` put into ``train.trial``, and builds the pruner from the same ``PrunerConfig``
(a pruner is not kept in the storage, so driver and child construct it from one description).
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from xrec_spark.config import PrunerConfig, PrunerKind, TrialConfig

log = logging.getLogger(__name__)


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """An Optuna storage: a URL with a scheme (``sqlite:///...``, ``postgresql://...``) is a
    database; anything else is the path of a journal file (created with its folder)."""
    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    from optuna.storages.journal import JournalFileBackend

    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def build_pruner(cfg: PrunerConfig, total_epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``cfg`` describes; epochs are 1-based Optuna steps.

    ``warmup_epochs`` epochs at the start of a trial are never pruned; Hyperband's maximum
    resource defaults to ``total_epochs`` (a fixed number, so driver and ranks agree).
    """
    if cfg.kind is PrunerKind.NONE:
        return optuna.pruners.NopPruner()
    if cfg.kind is PrunerKind.MEDIAN:
        # Optuna prunes from step >= n_warmup_steps on; our steps start at epoch 1.
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs + 1)
    max_epochs = cfg.max_epochs or max(total_epochs, cfg.min_epochs)
    return optuna.pruners.HyperbandPruner(min_resource=cfg.min_epochs, max_resource=max_epochs,
                                          reduction_factor=cfg.reduction_factor)


class TrialReporter:
    """One trial of a stored study, seen from training rank 0.

    >>> reporter = TrialReporter(cfg.train.trial, total_epochs=4)   # doctest: +SKIP
    >>> reporter.should_stop(0.031, epoch=1)                          # doctest: +SKIP
    False
    """

    def __init__(self, trial: TrialConfig, total_epochs: int) -> None:
        self.cfg = trial
        study = optuna.load_study(study_name=trial.study, storage=open_storage(trial.storage),
                                  pruner=build_pruner(trial.pruner, total_epochs))
        self.trial = optuna.trial.Trial(study, trial.trial_id)
        if self.trial.number != trial.number:
            raise ValueError(f"train.trial: storage id {trial.trial_id} of study {trial.study!r} is trial "
                             f"{self.trial.number}, not {trial.number}; was the study storage replaced?")

    def should_stop(self, metric: float, epoch: int) -> bool:
        """Report ``metric`` as the trial's value at ``epoch`` (1-based over all phases) and
        return the pruner's verdict."""
        self.trial.report(float(metric), step=int(epoch))
        if self.trial.should_prune():
            log.info("pruning trial %d of study %s at epoch %d: valid metric %.5f is below the pruner's "
                     "threshold (%s)", self.cfg.number, self.cfg.study, epoch, metric, self.cfg.pruner.kind.value)
            return True
        return False
