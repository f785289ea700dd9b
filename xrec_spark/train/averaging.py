"""An average of the weights over training (EMA or SWA), validated and saved in their place.

Why: the valid metric moves by about as much from epoch to epoch (and run to run) as the
recipe changes being compared, because the last weights carry the noise of the last steps.
An average of the weights along the trajectory (Polyak averaging; SWA, Izmailov et al. 2018)
sits nearer the centre of the region the optimizer wanders in. Training always continues from
the raw weights; only validation, the best-model file and the checkpoint see the average.

The average lives on rank 0 alone (rank 0 validates and saves; under DDP every rank holds the
same weights, so nothing is lost). It is built on :class:`torch.optim.swa_utils.AveragedModel`,
which keeps a deep copy of the model and updates every parameter with one fused ``foreach``
kernel per dtype. Every row of every table is updated (an EMA moves rows the batch did not
touch towards their current value too), so an update costs O(parameters), not O(batch):
``every_steps`` spaces the updates out where that cost matters.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from xrec_spark.config import WeightAverageConfig, WeightAverageKind


class WeightAverage:
    """The running average of ``model``'s parameters that ``cfg`` asks for (buffers are not
    averaged: the model's buffers are its fixed item content).

    :meth:`after_step` (every optimizer step) and :meth:`after_epoch` (every epoch end) are
    called with 1-based epoch numbers counted over all phases; :meth:`scored` is the module to
    validate and save: the average once it holds an update, else ``model`` itself.

    Example::

        avg = WeightAverage(model, WeightAverageConfig(kind="ema", ema_decay=0.9))
        avg.after_step(global_step=1, epoch=1)    # first update: a copy of the weights
        avg.scored()                               # the averaged CrossCategoryModel
    """

    def __init__(self, model: nn.Module, cfg: WeightAverageConfig) -> None:
        if cfg.kind is WeightAverageKind.NONE:
            raise ValueError("WeightAverage needs train.weight_average.kind ema or swa, got none")
        self.model, self.cfg = model, cfg
        multi_avg_fn = (get_ema_multi_avg_fn(cfg.ema_decay ** cfg.every_steps)
                        if cfg.kind is WeightAverageKind.EMA else None)   # None: equal-weight mean (SWA)
        self.average = AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=False)
        self.average.eval()

    @property
    def updates(self) -> int:
        """Updates folded into the average so far (0: :meth:`scored` is the raw model)."""
        return int(self.average.n_averaged.item())

    def after_step(self, global_step: int, epoch: int) -> None:
        """EMA: fold the current weights in every ``every_steps`` global steps from ``start_epoch``."""
        if self.cfg.kind is WeightAverageKind.EMA and epoch >= self.cfg.start_epoch \
                and global_step % self.cfg.every_steps == 0:
            self.average.update_parameters(self.model)

    def after_epoch(self, epoch: int) -> None:
        """SWA: fold in the weights at the end of every epoch from ``start_epoch``."""
        if self.cfg.kind is WeightAverageKind.SWA and epoch >= self.cfg.start_epoch:
            self.average.update_parameters(self.model)

    def scored(self) -> nn.Module:
        """The module to validate and save: the averaged copy once it holds an update."""
        return self.average.module if self.updates else self.model

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)
