"""The training loop one DDP rank runs: phases, epochs, steps, validation, checkpoints.

Every rank runs the same number of steps in every epoch (agreed with an all-reduce MIN of the
shard sizes before the first step), so collective calls always pair up. Rank 0 alone
validates, writes checkpoints and the best model, then broadcasts the early-stopping
decision; everything rank-dependent goes through :mod:`xrec_spark.train.ranks`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from xrec_spark.config import InitFrom, JobConfig, LossKind, PhaseConfig, WeightAverageKind
from xrec_spark.model.checkpoint import save_model
from xrec_spark.model.losses import Catalogue, MultiTaskLoss
from xrec_spark.model.towers import CrossCategoryModel, ModelSizes
from xrec_spark.model.transfer import phase_categories, phase_param_groups
from xrec_spark.train import ranks
from xrec_spark.train.averaging import WeightAverage
from xrec_spark.train.checkpoints import (
    Position, RunPaths, RunRecord, load_state, pack, rng_state, save_state, set_rng_state, unpack)
from xrec_spark.train.batching import batches, mix_seed, prefetched, steps_for, to_tensors
from xrec_spark.train.loader import open_loader
from xrec_spark.train.optim import Amp, Optimizers, Schedulers, warmup_cosine
from xrec_spark.train.progress import Progress, format_slices
from xrec_spark.train.pinned import init_items_from_profiles, load_content
from xrec_spark.train.spec import TRAINING_EXAMPLES, TrainSpec
from xrec_spark.train.validation import load_validation, validation_summary

log = logging.getLogger(__name__)


class _Objective(nn.Module):
    """Model + loss as one module for DDP: batch -> total loss (a scalar)."""

    def __init__(self, model: CrossCategoryModel, loss: MultiTaskLoss, log_popularity: Tensor | None,
                 catalogue: Catalogue | None = None) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.log_popularity, self.catalogue = log_popularity, catalogue

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        u, v = self.model.encode(batch)
        total, _ = self.loss(u, v, batch, self.log_popularity, self.catalogue, self.model.item_vectors)
        return total


@dataclass(frozen=True)
class PhaseRun:
    """What every step of one phase trains with: the phase, the (DDP-wrapped) objective, its
    optimizers and schedule, and the categories whose examples the phase keeps."""

    phase: PhaseConfig
    net: nn.Module
    optimizer: Optimizers
    scheduler: Schedulers
    cats: Tensor


class Trainer:
    """One rank's training run; :meth:`fit` returns the result dict (identical on all ranks)."""

    def __init__(self, spec: TrainSpec, cfg: JobConfig, info: ranks.RankInfo, paths: RunPaths) -> None:
        self.spec, self.cfg, self.tc, self.info, self.paths = spec, cfg, cfg.train, info, paths
        self.device = info.device
        sizes = ModelSizes(spec.sizes.n_users, spec.sizes.n_items, spec.sizes.n_categories)
        content = load_content(spec, cfg).to(self.device)
        self.model = CrossCategoryModel(cfg.model, sizes, content).to(self.device)
        if cfg.model.init_from is InitFrom.AUTOENCODER and info.is_zero:
            # Rank 0 alone: DistributedDataParallel starts every rank from rank 0's parameters
            # (a resumed run then loads its checkpoint over them).
            init_items_from_profiles(self.model, spec, cfg)
        self.loss = MultiTaskLoss(cfg.model, sizes.n_categories, spec.category_sizes).to(self.device)
        log_pop = content.log_popularity if cfg.model.loss is LossKind.SAMPLED_SOFTMAX else None
        catalogue = (Catalogue(content.category.cpu(), torch.expm1(content.log_popularity.cpu()).round(),
                               mix_seed(self.tc.seed, 7, info.rank)) if cfg.model.loss is LossKind.SOFTMAX else None)
        self.objective = _Objective(self.model, self.loss, log_pop, catalogue)
        self.amp = Amp(self.device)
        self.progress = Progress(info.is_zero)
        self.validation = load_validation(spec, cfg) if info.is_zero else None
        # Rank 0 alone validates and saves, so it alone keeps the weight average (averaging.py).
        self.average = (WeightAverage(self.model, self.tc.weight_average) if info.is_zero
                        and self.tc.weight_average.kind is not WeightAverageKind.NONE else None)
        self.metric_name = f"ndcg@{self.tc.eval_k}"
        self._wait = 0.0
        self.phase_base = np.cumsum([0] + [p.epochs for p in self.tc.phases]).tolist()
        self.trial = None   # `xrec tune`: rank 0 reports each epoch's metric and may be told to prune
        if info.is_zero and self.tc.trial is not None:
            from xrec_spark.tune.pruning import TrialReporter
            self.trial = TrialReporter(self.tc.trial, total_epochs=self.phase_base[-1])

    # ------------------------------------------------------------------ state

    def _rng(self) -> dict[str, Tensor]:
        out = rng_state(self.device)
        for name, module in self.model.named_modules():
            gen = getattr(module, "generator", None)
            if isinstance(gen, torch.Generator):   # id-dropout masks draw from the model's own generator
                out[f"generator:{name}"] = gen.get_state()
        return out

    def _set_rng(self, saved: dict[str, Tensor]) -> None:
        set_rng_state(saved, self.device)
        for name, module in self.model.named_modules():
            gen = getattr(module, "generator", None)
            if isinstance(gen, torch.Generator) and f"generator:{name}" in saved:
                gen.set_state(saved[f"generator:{name}"])

    def _checkpoint(self, pos: Position, prog: RunRecord, optimizer: Any = None, scheduler: Any = None) -> None:
        """Write state.pt on rank 0 (all ranks call this: it gathers every rank's RNG state)."""
        # Per rank: RNG streams and the epoch's running loss sums (each rank saw other rows).
        per_rank = ranks.gather_to_zero(self.info, {"rng": self._rng(), "loss_sum": pos.loss_sum, "rows": pos.rows})

        def write() -> None:
            state = {**pack(pos, prog), "run_id": self.spec.run_id, "world_size": self.info.world_size,
                     "model": self.model.state_dict(), "loss": self.loss.state_dict(), "ranks": per_rank,
                     "average": None if self.average is None else self.average.state_dict(),
                     "optimizer": optimizer.state_dict() if optimizer is not None else None,
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "scaler": self.amp.scaler.state_dict()}
            save_state(self.paths.state, state)

        ranks.on_rank_zero(self.info, write)

    def _restore(self) -> tuple[Position, RunRecord, dict[str, Any] | None]:
        exists = self.paths.state.is_file()
        if self.spec.resume == "require" and not exists:
            raise ValueError(f"resume requested but run {self.spec.run_id} has no checkpoint at "
                             f"{self.paths.state}; run without --resume to start it")
        if self.spec.resume == "never" or not exists:
            return Position(), RunRecord(), None
        state = load_state(self.paths.state)
        if state.get("run_id") != self.spec.run_id:
            raise ValueError(f"{self.paths.state} belongs to run {state.get('run_id')}, not {self.spec.run_id}")
        pos, prog = unpack(state)
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        if self.average is not None and state.get("average") is not None:
            self.average.load_state_dict(state["average"])
        if state.get("world_size") == self.info.world_size:
            mine = state["ranks"][self.info.rank]
            self._set_rng(mine["rng"])
            pos.loss_sum, pos.rows = mine["loss_sum"], mine["rows"]
        else:
            # Other shards: a half-done epoch cannot be continued, so it starts over.
            log.warning("checkpoint was written by %s ranks, this run has %d: RNG streams restart and "
                        "the current epoch restarts from its first step", state.get("world_size"),
                        self.info.world_size)
            pos.step, pos.loss_sum, pos.rows, pos.seconds = 0, 0.0, 0.0, 0.0
        if self.info.is_zero and prog.finished:   # e.g. only a new distilled student is wanted
            log.info("run %s finished training earlier: its checkpoint is loaded, no epoch runs", self.spec.run_id)
        elif self.info.is_zero:
            log.info("resuming run %s from its checkpoint at phase %d epoch %d step %d (global step %d)",
                     self.spec.run_id, pos.phase, pos.epoch, pos.step, pos.global_step)
        return pos, prog, state

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        pos, prog, state = self._restore()
        if pos.global_step == 0 and not prog.history:
            self._validate_start(prog)
        with open_loader(self.tc.loader.value, self.spec.inputs[TRAINING_EXAMPLES].files, self.info.rank,
                         self.info.world_size, self.tc.seed) as loader:
            for p, phase in enumerate(self.tc.phases):
                if p < pos.phase or phase.epochs == 0 or prog.finished:
                    continue
                resume_state = state if state is not None and state["position"]["phase"] == p else None
                pos = self._run_phase(p, phase, loader, pos, prog, resume_state)
        if not prog.finished:
            prog.finished = True
            if prog.best_metric is None:   # nothing validated: the last model is the result
                ranks.on_rank_zero(self.info, lambda: save_model(self.paths.model, self._scored(), self._meta(None)))
            self._checkpoint(pos, prog)
        return ranks.broadcast_from_zero(self.info, self._summary(prog, pos))

    def _validate_start(self, prog: RunRecord) -> None:
        """Validate the untrained model. With item biases it ranks like per-category popularity
        and is the first candidate of early stopping: a training that never beats the prior on
        valid returns the prior, so training can only add to it (rank 0 decides, all agree)."""
        def validate() -> dict:
            if self.validation is None:
                return {}
            metric, groups, by_slice = self._valid()
            log.info("before training: valid %s %.4f over %d groups (%s)", self.metric_name, metric, groups,
                     format_slices(by_slice) or "no slices")
            start = {"valid_metric": metric, "valid_groups": groups, "valid_by_slice": by_slice,
                     "metric_name": self.metric_name} if groups else None
            if not (self.cfg.model.item_bias and groups):
                return {"start": start}
            best_at = {"phase": "prior", "epoch": 0, "global_step": 0}
            save_model(self.paths.model, self.model, self._meta(metric))
            return {"best_metric": metric, "best_at": best_at, "start": start}

        shared = ranks.broadcast_from_zero(self.info, validate() if self.info.is_zero else None)
        prog.start = shared.get("start")
        if "best_metric" in shared:
            prog.best_metric, prog.best_at = shared["best_metric"], shared["best_at"]

    def _run_phase(self, p: int, phase: PhaseConfig, loader: Any, pos: Position, prog: RunRecord,
                   state: dict[str, Any] | None) -> Position:
        sources, targets = self.spec.source_categories, self.spec.target_categories
        groups = phase_param_groups(self.model, self.loss, phase.name, phase.lr, phase.shared_lr_scale,
                                    sources, targets)
        cats = torch.tensor(sorted(phase_categories(phase.name, sources, targets)), dtype=torch.long)
        bias = [t for t in (self.model.item_tower.bias, self.model.item_tower.unseen_bias) if t is not None]
        optimizer = Optimizers(groups, {id(p) for p in self.model.sparse_parameters()},
                               {id(t.weight) for t in bias}, self.tc.weight_decay, self.cfg.model.item_bias_lr_scale)
        net: nn.Module = self.objective
        if self.info.distributed:
            # Re-wrapped per phase: which parameters train changes between phases. Unused
            # parameters are normal (a batch may lack a category, so its head is idle). Content
            # buffers are identical on every rank, so they are not re-broadcast each step.
            net = DistributedDataParallel(self.objective, device_ids=[self.device] if self.device.type == "cuda"
                                          else None, find_unused_parameters=True, forward_sync_buffers=False)
        scheduler = None
        if state is None or state["position"]["phase"] != p:
            pos = Position(phase=p, global_step=pos.global_step)
        if pos.epoch == 0 and pos.step == 0:
            prog.bad_epochs = 0   # patience counts within a phase: each phase has its own objective
        for epoch in range(pos.epoch, phase.epochs):
            shard = loader.epoch(self.phase_base[p] + epoch)
            steps = steps_for(ranks.min_over_ranks(self.info, shard.rows), self.tc.batch_size)
            if scheduler is None:
                scheduler = Schedulers(optimizer, warmup_cosine(steps * phase.epochs))
                if state is not None and state.get("optimizer") is not None:
                    optimizer.load_state_dict(state["optimizer"])
                    scheduler.load_state_dict(state["scheduler"])
                    self.amp.scaler.load_state_dict(state["scaler"])
            run = PhaseRun(phase, net, optimizer, scheduler, cats)
            pos = self._run_epoch(run, epoch, shard, steps, pos, prog)
            record, stop = self._end_epoch(phase, epoch, pos, prog)
            prog.finished = prog.finished or bool(record.get("pruned"))   # a pruned trial skips later phases
            last = stop or epoch + 1 == phase.epochs
            nxt = Position(phase=p + 1 if last else p, epoch=0 if last else epoch + 1,
                           global_step=pos.global_step)
            self._checkpoint(nxt, prog, None if last else optimizer, None if last else scheduler)
            pos = nxt
            if stop:
                if self.info.is_zero and not record.get("pruned"):
                    log.info("early stop of phase %s after epoch %d: no %s gain for %d epoch(s)", phase.name,
                             epoch + 1, self.metric_name, prog.bad_epochs)
                break
        return pos

    def _run_epoch(self, run: PhaseRun, epoch: int, shard: Any, steps: int, pos: Position,
                   prog: RunRecord) -> Position:
        phase = run.phase
        first = pos.step if pos.epoch == epoch else 0
        if first == 0:
            pos = Position(phase=pos.phase, epoch=epoch, global_step=pos.global_step)
        seed = mix_seed(self.tc.seed, self.phase_base[pos.phase] + epoch, self.info.rank)
        self.progress.start_epoch(phase.name, epoch, phase.epochs, steps, first)
        t0, wait = time.perf_counter(), 0.0
        stream = (to_tensors(b) for b in batches(shard.chunks(), self.tc.batch_size, steps, seed, skip=first))
        try:
            with prefetched(stream) as it:
                step = first
                while True:
                    w0 = time.perf_counter()
                    batch = next(it, None)
                    wait += time.perf_counter() - w0
                    if batch is None:
                        break
                    self._fail_hook(pos.global_step + 1)
                    loss, n = self._step(run, batch, epoch, step)
                    pos.loss_sum += loss * n
                    pos.rows += n
                    pos.global_step += 1
                    step += 1
                    if self.average is not None:
                        self.average.after_step(pos.global_step, self.phase_base[pos.phase] + epoch + 1)
                    self.progress.step(step - 1, loss, n * self.info.world_size)
                    if pos.global_step % self.tc.checkpoint_every_steps == 0 and step < steps:
                        pos.step = step
                        snapshot = Position(**{**pos.__dict__, "seconds": pos.seconds + time.perf_counter() - t0})
                        self._checkpoint(snapshot, prog, run.optimizer, run.scheduler)
        finally:
            shard.close()
        pos.step = steps
        pos.seconds += time.perf_counter() - t0
        self._wait = wait
        return pos

    def _fail_hook(self, step: int) -> None:
        if self.spec.fail_at_step is not None and step == self.spec.fail_at_step \
                and self.info.rank == self.spec.fail_rank:
            raise RuntimeError(f"injected failure at global step {step} on rank {self.info.rank} "
                               "(TrainSpec.fail_at_step test hook)")

    def _step(self, run: PhaseRun, batch: dict[str, Tensor], epoch: int, step: int) -> tuple[float, int]:
        phase, optimizer = run.phase, run.optimizer
        keep = torch.isin(batch["category_idx"], run.cats)
        if not bool(keep.all()):
            batch = {k: v[keep] for k, v in batch.items()}
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        with self.amp.autocast():
            loss = run.net(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} in phase {phase.name} epoch {epoch + 1} step {step + 1}; "
                                     f"lower train.phases[].lr (now {phase.lr}) or train.grad_clip")
        self.amp.scaler.scale(loss).backward()
        for opt in optimizer.parts:
            self.amp.scaler.unscale_(opt)
        # Sparse gradients are left out of the norm (torch's clip works on dense ones).
        nn.utils.clip_grad_norm_([p for p in optimizer.dense_params if p.grad is not None], self.tc.grad_clip)
        for opt in optimizer.parts:
            self.amp.scaler.step(opt)
        self.amp.scaler.update()
        run.scheduler.step()
        return float(loss.detach()), int(batch["label"].shape[0])

    # ------------------------------------------------------------------ epoch end

    def _end_epoch(self, phase: PhaseConfig, epoch: int, pos: Position, prog: RunRecord) -> tuple[dict, bool]:
        loss_sum, rows, wait = ranks.sum_over_ranks(self.info, [pos.loss_sum, pos.rows, self._wait])
        record = {"phase": phase.name, "epoch": epoch + 1, "global_step": pos.global_step,
                  "loss": loss_sum / max(rows, 1.0), "rows": rows, "seconds": pos.seconds,
                  "samples_per_s": rows / max(pos.seconds, 1e-9),
                  "data_wait_share": wait / self.info.world_size / max(pos.seconds, 1e-9),
                  "metric_name": self.metric_name}

        def validate() -> tuple[dict, bool, dict]:
            if self.average is not None:
                self.average.after_epoch(self.phase_base[pos.phase] + epoch + 1)
            metric, groups, by_slice = self._valid(self._scored())
            record.update(valid_metric=None if groups == 0 else metric, valid_groups=groups,
                          valid_by_slice=by_slice, averaged=self._scored() is not self.model)
            self._valid_raw(record)
            stop = False
            if groups:
                if prog.best_metric is None or metric > prog.best_metric:
                    prog.best_metric, prog.bad_epochs = metric, 0
                    prog.best_at = {"phase": phase.name, "epoch": epoch + 1, "global_step": pos.global_step}
                    save_model(self.paths.model, self._scored(), self._meta(metric))
                else:
                    prog.bad_epochs += 1
                    stop = prog.bad_epochs > self.tc.patience
                if self.trial is not None and self.trial.should_stop(metric, self.phase_base[pos.phase] + epoch + 1):
                    record["pruned"] = stop = True
            self.progress.end_epoch(record)
            return record, stop, {"best_metric": prog.best_metric, "best_at": prog.best_at,
                                  "bad_epochs": prog.bad_epochs}

        # Rank 0 decides; every rank takes its bookkeeping so that later rank-0-only actions
        # (guarded by the same conditions on every rank) meet at the same barriers.
        record, stop, shared = ranks.broadcast_from_zero(self.info, validate() if self.info.is_zero else None)
        prog.best_metric, prog.best_at, prog.bad_epochs = shared["best_metric"], shared["best_at"], shared["bad_epochs"]
        prog.history.append(record)
        return record, stop

    def _valid(self, model: nn.Module | None = None) -> tuple[float, int, dict[str, float]]:
        """Valid NDCG@k of ``model`` (None: the raw weights), the groups counted, its mean per slice."""
        if self.validation is None:
            return float("nan"), 0, {}
        return validation_summary(self.model if model is None else model, self.validation, self.tc.eval_k, self.device)

    def _scored(self) -> nn.Module:
        """What is validated and saved: the weight average once it holds an update, else the model."""
        return self.model if self.average is None else self.average.scored()

    def _valid_raw(self, record: dict[str, Any]) -> None:
        """``train.weight_average.validate_raw``: the raw weights' metric next to the average's."""
        if not (self.tc.weight_average.validate_raw and record.get("averaged")):
            return
        metric, _, by_slice = self._valid()
        record.update(valid_metric_raw=metric, valid_by_slice_raw=by_slice)
        log.info("epoch %d raw weights: valid %s %.4f, %s", record["epoch"], self.metric_name, metric,
                 format_slices(by_slice))

    def _meta(self, metric: float | None) -> dict[str, Any]:
        return {"model_version": self.spec.model_version, "run_id": self.spec.run_id,
                "input_versions": self.spec.input_versions(), "valid_metric": metric,
                "metric_name": self.metric_name, "target_categories": list(self.spec.target_categories)}

    def _summary(self, prog: RunRecord, pos: Position) -> dict[str, Any]:
        history = prog.history
        metrics: dict[str, float] = {"steps": float(pos.global_step), "epochs": float(len(history))}
        if history:
            metrics["final_loss"] = float(history[-1]["loss"])
            total_rows = sum(h["rows"] for h in history)
            total_s = sum(h["seconds"] for h in history)
            metrics["samples_per_s"] = total_rows / max(total_s, 1e-9)
            metrics["train_seconds"] = total_s
            # Share of the training time a rank waited for its next batch: the loader's cost.
            waited = sum(h.get("data_wait_share", 0.0) * h["seconds"] for h in history)
            metrics["data_wait_share"] = waited / max(total_s, 1e-9)
        if prog.best_metric is not None:
            metrics[f"valid_{self.metric_name}"] = float(prog.best_metric)
        return {"metrics": metrics, "history": history, "best_at": prog.best_at, "valid_start": prog.start}
