"""The ``train`` section: transfer phases, distributed ranks, and the tuning trial a run reports to."""

from __future__ import annotations

from enum import Enum, StrEnum

from pydantic import Field

from xrec_spark.config.base import _Section


class LoaderKind(str, Enum):
    PETASTORM = "petastorm"
    ARROW = "arrow"


class TransferPhase(StrEnum):
    """A transfer phase (``train.phases[].name``; the rules are in ``model/transfer.py``):
    pretrain trains the shared parameters and the source heads on source categories, freeze
    the target heads alone on target categories, finetune everything on both."""

    PRETRAIN = "pretrain"
    FREEZE = "freeze"
    FINETUNE = "finetune"


class PhaseConfig(_Section):
    """One transfer phase: pretrain (shared, sources), freeze (target heads), finetune (all)."""

    name: TransferPhase
    epochs: int = Field(1, ge=0)
    lr: float = Field(1e-3, gt=0)
    shared_lr_scale: float = Field(1.0, ge=0)


class PrunerKind(str, Enum):
    NONE = "none"
    MEDIAN = "median"
    HYPERBAND = "hyperband"


class PrunerConfig(_Section):
    """How a tuning trial is pruned on its per-epoch valid metric (``xrec tune``).

    ``median``: stop a trial whose metric at an epoch is below the median of the finished
    trials at that epoch, once ``startup_trials`` trials finished and after ``warmup_epochs``.
    ``hyperband``: successive halving between ``min_epochs`` and ``max_epochs`` (None: the
    trial's total epochs) with ``reduction_factor``.
    """

    kind: PrunerKind = PrunerKind.MEDIAN
    startup_trials: int = Field(2, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    min_epochs: int = Field(1, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    reduction_factor: int = Field(3, ge=2)


class TrialConfig(_Section):
    """The Optuna trial a training run reports its per-epoch valid metric to; set by
    ``xrec tune`` (see ``xrec_spark/tune/``), read on rank 0 only."""

    # Optuna storage: an RDB URL (``sqlite:///...``) or the path of a journal file.
    storage: str
    study: str
    trial_id: int = Field(ge=0)
    number: int = Field(ge=0)
    pruner: PrunerConfig = PrunerConfig()


class DistBackend(StrEnum):
    """torch.distributed backend of the training ranks on CUDA (CPU ranks always use gloo)."""

    GLOO = "gloo"
    NCCL = "nccl"


class WeightAverageKind(StrEnum):
    """Which average of the weights is validated and saved (``train.weight_average.kind``)."""

    NONE = "none"
    EMA = "ema"
    SWA = "swa"


class WeightAverageConfig(_Section):
    """An average of the weights over training, validated and saved instead of the last weights
    (training itself continues from the raw weights).

    ``ema``: an exponential moving average updated every ``every_steps`` optimizer steps, each
    update with ``ema_decay ** every_steps`` so that ``ema_decay`` is a per-step decay whatever
    ``every_steps`` is (horizon about ``1 / (1 - ema_decay)`` steps). ``swa``: the equal-weight
    mean of the weights at the end of every epoch from ``start_epoch`` on (Izmailov et al.
    2018). Both start at ``start_epoch`` (1-based, counted over all phases); before it the raw
    weights are validated. ``validate_raw`` also validates the raw weights each epoch and logs
    both (one extra scoring pass), for a paired comparison on the same training run.
    """

    kind: WeightAverageKind = WeightAverageKind.NONE
    ema_decay: float = Field(0.998, gt=0, lt=1)
    every_steps: int = Field(1, ge=1)
    start_epoch: int = Field(1, ge=1)
    validate_raw: bool = False


class TrainConfig(_Section):
    num_processes: int = Field(2, ge=1)
    local_mode: bool = True
    # Training ranks on CUDA (TorchDistributor's use_gpu); the export's device is batch.device.
    use_gpu: bool = False
    backend: DistBackend = DistBackend.GLOO
    loader: LoaderKind = LoaderKind.PETASTORM
    batch_size: int = Field(1024, ge=1)
    phases: list[PhaseConfig] = Field(
        default_factory=lambda: [
            PhaseConfig(name=TransferPhase.PRETRAIN, epochs=2, lr=2e-3),
            PhaseConfig(name=TransferPhase.FREEZE, epochs=1, lr=2e-3),
            PhaseConfig(name=TransferPhase.FINETUNE, epochs=1, lr=1e-3, shared_lr_scale=0.1),
        ]
    )
    # Target categories (natural ids) of the transfer phases; empty = all categories are targets.
    target_categories: list[str] = Field(default_factory=list)
    source_top_n: int = Field(5, ge=1)
    grad_clip: float = Field(5.0, gt=0)
    # Decoupled weight decay (AdamW) on every trained parameter but the item bias.
    weight_decay: float = Field(0.0, ge=0)
    # Validate and save an average of the weights (EMA or SWA) instead of the last weights.
    weight_average: WeightAverageConfig = WeightAverageConfig()
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int = Field(200, ge=1)
    patience: int = Field(2, ge=0)
    eval_k: int = Field(10, ge=1)
    tracking_uri: str | None = None
    seed: int = 13
    # Validation (user, category) groups scored per epoch on rank 0; more are sampled down.
    valid_max_groups: int = Field(20_000, ge=1)
    # Set by `xrec tune` for each trial (None: a plain training run).
    trial: TrialConfig | None = None
