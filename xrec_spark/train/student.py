"""The distilled student of a training run (``model.distill``), fitted on the ranks after the teacher.

Every rank loads the teacher's best weights (the run's model file), builds the small student
(:func:`xrec_spark.model.distill.make_student`) and trains it under DDP on the same training
examples, the teacher frozen: the teacher's item vectors are computed once (they do not change),
its user vectors per batch. The listwise target covers each example's category through the
batch's own items plus ``model.distill_pool`` items drawn per category of the batch, so the
student learns the teacher's ranking of the catalogue, not only of the items users took. Rank 0
validates the student after each pass and keeps its best as ``<student_tag>.pt``; the driver then
logs it as its own run with the teacher as parent.

A student is short to fit and has no checkpoint of its own: a run resumed after the teacher
finished fits it again from the start. Its settings are not part of the teacher's run id, so
distilling a trained model (or trying other settings) reloads the finished teacher from its
checkpoint instead of training it again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from xrec_spark.config import JobConfig, ModelConfig
from xrec_spark.model.checkpoint import read_checkpoint, save_model
from xrec_spark.model.distill import Pool, distillation_loss, make_student
from xrec_spark.model.losses import Catalogue, uniform_subset
from xrec_spark.model.towers import CrossCategoryModel
from xrec_spark.train import ranks
from xrec_spark.train.batching import batches, mix_seed, prefetched, steps_for, to_tensors
from xrec_spark.train.checkpoints import RunPaths
from xrec_spark.train.loader import open_loader
from xrec_spark.train.optim import Optimizers, Schedulers, warmup_cosine
from xrec_spark.train.spec import TRAINING_EXAMPLES, TrainSpec
from xrec_spark.train.validation import ValidationSet, validation_summary

log = logging.getLogger(__name__)


class StudentObjective(nn.Module):
    """Student + frozen teacher's item vectors as one module for DDP: batch, teacher user
    vectors -> the distillation loss (a scalar)."""

    def __init__(self, student: CrossCategoryModel, teacher_items: Tensor, item_category: Tensor,
                 mc: ModelConfig, seed: int) -> None:
        super().__init__()
        self.student, self.mc = student, mc
        # Plain attributes, not buffers: DDP must not broadcast them (identical on every rank).
        self.teacher_items = teacher_items
        self.item_category = item_category
        # The items of each category and the seeded generator of the pools (popularity unused).
        self.catalogue = Catalogue(item_category, torch.zeros_like(item_category), seed)

    @torch.no_grad()
    def draw(self, category_idx: Tensor, teacher_u: Tensor) -> Tensor:
        """Per category of the batch: ``distill_pool`` of its items uniformly, plus the teacher's
        top ``distill_top`` of it for each of the batch's users there (distinct ids)."""
        picks = []
        for k in torch.unique(category_idx).tolist():
            items = self.catalogue.items(int(k))
            if items.numel() == 0:
                continue
            if self.mc.distill_pool:
                picks.append(items[uniform_subset(items.numel(), self.mc.distill_pool, self.catalogue.generator)])
            if self.mc.distill_top:
                on = items.to(teacher_u.device)
                scores = teacher_u[category_idx == k] @ self.teacher_items[on].T
                top = scores.topk(min(self.mc.distill_top, on.numel()), dim=1).indices
                picks.append(on[torch.unique(top)].cpu())
        return torch.unique(torch.cat(picks)) if picks else torch.zeros(0, dtype=torch.long)

    def forward(self, batch: dict[str, Tensor], teacher_u: Tensor) -> Tensor:
        s_u, s_v = self.student.encode(batch)
        t_v = self.teacher_items[batch["item_idx"]]
        ids = self.draw(batch["category_idx"], teacher_u).to(s_u.device)
        pool = None
        if ids.numel():
            pool = Pool(self.student.item_vectors(ids), self.teacher_items[ids], self.item_category.to(ids.device)[ids])
        return distillation_loss(s_u, s_v, teacher_u, t_v, batch["category_idx"], self.mc.temperature, pool,
                                 self.mc.distill_pointwise)


@torch.no_grad()
def teacher_item_table(teacher: CrossCategoryModel, chunk: int = 65536) -> Tensor:
    """``[content_rows, D]`` the teacher's vectors of every item it has content for (row 0 zero)."""
    n = teacher.item_tower.content_rows
    device = teacher.item_tower.ids.weight.device
    parts = [teacher.item_vectors(torch.arange(s, min(s + chunk, n), device=device)) for s in range(1, n, chunk)]
    dim = parts[0].shape[1] if parts else teacher.cfg.embedding_dim
    return torch.cat([torch.zeros(1, dim, device=device), *parts])


def fit_student(spec: TrainSpec, cfg: JobConfig, info: ranks.RankInfo, paths: RunPaths,
                teacher: CrossCategoryModel, validation: ValidationSet | None) -> dict[str, Any]:
    """Distil the run's best teacher (``paths.model``, loaded into ``teacher``) into a student
    saved at ``paths.student``; returns its summary (identical on every rank)."""
    mc, tc = cfg.model, cfg.train
    state, _ = read_checkpoint(paths.model)
    teacher.load_state_dict(state)
    teacher.eval()
    student = make_student(teacher)
    teacher_items = teacher_item_table(teacher)
    objective = StudentObjective(student, teacher_items, teacher.item_tower.content_category.cpu(), mc,
                                 mix_seed(tc.seed, 11, info.rank))
    net: nn.Module = objective
    if info.distributed:
        net = DistributedDataParallel(objective, device_ids=[info.device] if info.device.type == "cuda" else None,
                                      find_unused_parameters=True, forward_sync_buffers=False)
    bias = [t for t in (student.item_tower.bias, student.item_tower.unseen_bias) if t is not None]
    optimizer = Optimizers([{"params": list(student.parameters()), "lr": mc.distill_lr}],
                           {id(p) for p in student.sparse_parameters()}, {id(t.weight) for t in bias}, 0.0)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"metric": None, "epoch": None}
    scheduler = None
    with open_loader(tc.loader.value, spec.inputs[TRAINING_EXAMPLES].files, info.rank, info.world_size,
                     tc.seed) as loader:
        for epoch in range(mc.distill_epochs):
            shard = loader.epoch(10_000 + epoch)   # an order of its own, not the teacher's epochs'
            steps = steps_for(ranks.min_over_ranks(info, shard.rows), tc.batch_size)
            scheduler = scheduler or Schedulers(optimizer, warmup_cosine(steps * mc.distill_epochs))
            record = _student_epoch(net, teacher, student, optimizer, scheduler, shard, steps,
                                    mix_seed(tc.seed, 10_000 + epoch, info.rank), tc.batch_size, tc.grad_clip,
                                    info.device)
            record["epoch"] = epoch + 1
            history.append(ranks.broadcast_from_zero(
                info, _validate(record, student, validation, cfg, spec, paths, best) if info.is_zero else None))
    summary = {"model_version": spec.student_version, "run_id": spec.student_run_id, "model_path": str(paths.student(spec.student_tag)),
               "history": history, "metrics": _metrics(history, student, teacher, tc.eval_k)}
    return ranks.broadcast_from_zero(info, summary if info.is_zero else None)


def _student_epoch(net: nn.Module, teacher: CrossCategoryModel, student: CrossCategoryModel, optimizer: Optimizers,
                   scheduler: Schedulers, shard: Any, steps: int, seed: int, batch_size: int, grad_clip: float,
                   device: torch.device) -> dict[str, Any]:
    student.train()
    t0, loss_sum, rows = time.perf_counter(), 0.0, 0
    stream = (to_tensors(b) for b in batches(shard.chunks(), batch_size, steps, seed))
    try:
        with prefetched(stream) as it:
            for batch in it:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with torch.no_grad():
                    teacher_u = teacher.user_vectors(batch["user_idx"], batch["history"], batch["category_idx"])
                optimizer.zero_grad(set_to_none=True)
                loss = net(batch, teacher_u)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"student distillation loss is {loss.item()}; lower model.distill_lr "
                                             f"(now {optimizer.parts[0].param_groups[0]['lr']})")
                loss.backward()
                nn.utils.clip_grad_norm_([p for p in optimizer.dense_params if p.grad is not None], grad_clip)
                for opt in optimizer.parts:
                    opt.step()
                scheduler.step()
                n = int(batch["label"].shape[0])
                loss_sum, rows = loss_sum + float(loss.detach()) * n, rows + n
    finally:
        shard.close()
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / max(rows, 1), "rows": rows, "seconds": seconds, "samples_per_s": rows / max(seconds, 1e-9)}


def _validate(record: dict[str, Any], student: CrossCategoryModel, validation: ValidationSet | None,
              cfg: JobConfig, spec: TrainSpec, paths: RunPaths, best: dict[str, Any]) -> dict[str, Any]:
    """Rank 0: the pass's valid NDCG@k; the best pass so far (or the last, without validation)
    is written as the student's model file."""
    metric, groups, by_slice = (validation_summary(student, validation, cfg.train.eval_k, next(student.parameters()).device)
                                if validation is not None else (float("nan"), 0, {}))
    record.update(valid_metric=metric if groups else None, valid_by_slice=by_slice, metric_name=f"ndcg@{cfg.train.eval_k}")
    if not groups or best["metric"] is None or metric > best["metric"]:
        best.update(metric=metric if groups else None, epoch=record["epoch"])
        save_model(paths.student(spec.student_tag), student, {
            "model_version": spec.student_version, "run_id": spec.student_run_id, "parent_model_version": spec.model_version,
            "input_versions": spec.input_versions(), "valid_metric": best["metric"], "metric_name": record["metric_name"],
            "target_categories": list(spec.target_categories)})
    log.info("student pass %d/%d done: loss %.4f, %.0f samples/s, valid %s %s", record["epoch"], cfg.model.distill_epochs,
             record["loss"], record["samples_per_s"], record["metric_name"],
             "n/a" if record["valid_metric"] is None else f"{record['valid_metric']:.4f}")
    student.train()
    return record


def _metrics(history: list[dict[str, Any]], student: nn.Module, teacher: nn.Module, k: int) -> dict[str, float]:
    rows, seconds = sum(h["rows"] for h in history), sum(h["seconds"] for h in history)
    out = {"epochs": float(len(history)), "final_loss": float(history[-1]["loss"]) if history else float("nan"),
           "samples_per_s": rows / max(seconds, 1e-9), "train_seconds": seconds,
           "parameters": float(sum(p.numel() for p in student.parameters())),
           "teacher_parameters": float(sum(p.numel() for p in teacher.parameters()))}
    scored = [h["valid_metric"] for h in history if h.get("valid_metric") is not None]
    if scored:
        out[f"valid_ndcg@{k}"] = float(max(scored))
    return out
