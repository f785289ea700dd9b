"""Training building blocks with hand-computed expectations (no processes, no Spark)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from xrec_spark.config import WeightAverageConfig, build_config
from xrec_spark.train.averaging import WeightAverage
from xrec_spark.train.checkpoints import RunPaths, atomic_write, load_state, save_state
from xrec_spark.train.ddp import RecordedFailure
from xrec_spark.train.launch import failure_message, rank_errors, run_id_for
from xrec_spark.train.spec import InputTable, Sizes, TrainSpec
from xrec_spark.train.optim import Optimizers, warmup_cosine
from xrec_spark.train.validation import build_validation, slice_means, validation_ndcg


def _spec(tmp_path, **kw) -> TrainSpec:
    cfg = build_config({})
    inputs = {"silver.training_examples": InputTable("silver.training_examples", "/t", 3, ("file:/t/a.parquet",))}
    return TrainSpec(run_id="r1", model_version="m-r1", run_dir=str(tmp_path), config=cfg.model_dump(mode="json"),
                     inputs=inputs, sizes=Sizes(4, 5, 2), target_categories=(2,), source_categories=(1,), **kw)


def test_spec_round_trips_through_json(tmp_path):
    spec = _spec(tmp_path, fail_at_step=7, category_sizes=(0, 3, 4))
    again = TrainSpec.read(spec.write(tmp_path / "spec.json"))
    assert again == spec
    assert again.job_config().train.batch_size == 1024
    assert again.input_versions() == {"silver.training_examples": 3}


def test_spec_written_before_a_key_rename_still_reads(tmp_path):
    spec = _spec(tmp_path)
    stored = json.loads(spec.to_json())
    batch = stored["config"]["batch"]
    batch["block_size"] = batch.pop("users_per_block") + 1       # the key as a run stored it before the rename
    again = TrainSpec.from_json(json.dumps(stored))
    assert again.job_config().batch.users_per_block == spec.job_config().batch.users_per_block + 1


def test_spec_rejects_unknown_resume_mode(tmp_path):
    with pytest.raises(ValueError, match="resume"):
        _spec(tmp_path, resume="sometimes")


def test_run_id_ignores_output_locations_but_not_inputs_or_training_config():
    base = build_config({})
    moved = build_config({"train": {"checkpoint_dir": "/elsewhere", "tracking_uri": "http://x"}})
    other_lr = build_config({"train": {"batch_size": 8}})
    versions = {"silver.training_examples": 3}
    assert run_id_for(base, versions) == run_id_for(moved, versions)
    assert run_id_for(base, versions) != run_id_for(other_lr, versions)
    assert run_id_for(base, versions) != run_id_for(base, {"silver.training_examples": 4})


def test_run_id_counts_a_weight_average_only_when_one_is_on():
    versions = {"silver.training_examples": 3}
    base = run_id_for(build_config({}), versions)
    assert run_id_for(build_config({"train": {"weight_average": {"ema_decay": 0.9}}}), versions) == base
    assert run_id_for(build_config({"train": {"weight_average": {"kind": "ema"}}}), versions) != base


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.pt"
    save_state(target, {"step": 1})

    def broken(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert load_state(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]     # no temporary file left


def test_recorded_failure_writes_the_traceback_and_reraises(tmp_path):
    paths = RunPaths.of(tmp_path)
    with pytest.raises(KeyError, match="item_idx"):
        with RecordedFailure(paths, rank=1):
            raise KeyError("item_idx")
    record = json.loads(paths.error_file(1).read_text())
    assert record["rank"] == 1 and record["error"] == "KeyError: 'item_idx'"
    assert "raise KeyError" in record["traceback"]


def test_failure_message_puts_the_earliest_error_first(tmp_path):
    paths = RunPaths.of(tmp_path)
    paths.errors.mkdir()
    for rank, t, err in ((0, 20.0, "peer closed"), (1, 10.0, "ValueError: bad row")):
        paths.error_file(rank).write_text(json.dumps({"rank": rank, "time": t, "error": err, "traceback": "tb\n"}))
    records = rank_errors(paths)
    message = failure_message(records, str(tmp_path))
    assert message.startswith("training failed on rank 1: ValueError: bad row")
    assert "rank 0 also failed: peer closed" in message


def test_warmup_cosine_schedule():
    f = warmup_cosine(200, floor=0.1)        # warm-up = min(100, 200 // 20) = 10 steps
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(105) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 95 / 190)))
    assert f(200) == pytest.approx(0.1)


def test_dense_adamw_takes_the_fused_kernel_and_steps_like_the_plain_one():
    torch.manual_seed(0)
    model = nn.ModuleDict({"lin": nn.Linear(3, 2), "emb": nn.Embedding(4, 2, sparse=True)})
    opt = Optimizers([{"params": list(model.parameters()), "lr": 0.1}], {id(model["emb"].weight)}, set(),
                     weight_decay=0.01)
    (model["lin"](torch.ones(1, 3)).sum() + model["emb"](torch.tensor([1])).sum()).backward()
    for part in opt.parts:
        part.step()
    assert opt.parts[0].defaults["fused"] and isinstance(opt.parts[1], torch.optim.SparseAdam)
    # The same update as AdamW without the fused kernel.
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    plain = torch.optim.AdamW(lin.parameters(), lr=0.1, weight_decay=0.01, fused=False)
    lin(torch.ones(1, 3)).sum().backward()
    plain.step()
    assert torch.allclose(model["lin"].weight, lin.weight, atol=1e-6)


def _averaged_pair(**cfg) -> tuple[nn.Module, WeightAverage]:
    # One weight [2] and a sparse-gradient embedding table [3, 1], both set by hand.
    model = nn.ModuleDict({"lin": nn.Linear(2, 1, bias=False), "emb": nn.Embedding(3, 1, sparse=True)})
    return model, WeightAverage(model, WeightAverageConfig(**cfg))


def _set(model: nn.Module, w: float) -> None:
    with torch.no_grad():
        model["lin"].weight.fill_(w)
        model["emb"].weight.fill_(w)


def test_ema_folds_in_each_step_with_the_per_step_decay_and_leaves_the_raw_weights():
    model, avg = _averaged_pair(kind="ema", ema_decay=0.5)
    assert avg.scored() is model                     # no update yet: the raw model is scored
    for step, w in enumerate([4.0, 8.0, 0.0], start=1):
        _set(model, w)
        avg.after_step(step, epoch=1)
        avg.after_epoch(1)                           # SWA's hook: no effect on an EMA
    # 4 (copy) -> 0.5*4 + 0.5*8 = 6 -> 0.5*6 + 0.5*0 = 3
    assert avg.updates == 3
    for name in ("lin", "emb"):
        assert torch.allclose(avg.scored()[name].weight, torch.full_like(model[name].weight, 3.0))
        assert torch.equal(model[name].weight, torch.zeros_like(model[name].weight))


def test_ema_every_k_steps_uses_decay_to_the_k_and_waits_for_start_epoch():
    model, avg = _averaged_pair(kind="ema", ema_decay=0.5, every_steps=2, start_epoch=2)
    for step, (epoch, w) in enumerate([(1, 9.0), (1, 9.0), (2, 4.0), (2, 4.0), (2, 8.0), (2, 8.0)], start=1):
        _set(model, w)
        avg.after_step(step, epoch)
    # Epoch 1 is skipped; updates at steps 4 (copy: 4) and 6 (0.25*4 + 0.75*8 = 7).
    assert avg.updates == 2
    assert torch.allclose(avg.scored()["lin"].weight, torch.full((1, 2), 7.0))


def test_swa_is_the_mean_of_the_epoch_ends_from_start_epoch_and_round_trips():
    model, avg = _averaged_pair(kind="swa", start_epoch=2)
    for epoch, w in enumerate([100.0, 1.0, 2.0, 6.0], start=1):
        _set(model, w)
        avg.after_step(epoch, epoch)                 # EMA's hook: no effect on SWA
        avg.after_epoch(epoch)
    assert avg.updates == 3
    assert torch.allclose(avg.scored()["emb"].weight, torch.full((3, 1), 3.0))   # (1 + 2 + 6) / 3
    _, other = _averaged_pair(kind="swa", start_epoch=2)
    other.load_state_dict(avg.state_dict())
    assert other.updates == 3 and torch.allclose(other.scored()["emb"].weight, torch.full((3, 1), 3.0))


def test_weight_average_needs_a_kind_and_a_decay_below_one():
    with pytest.raises(ValueError, match="ema or swa"):
        _averaged_pair()
    with pytest.raises(ValueError, match="ema_decay"):
        build_config({"train": {"weight_average": {"kind": "ema", "ema_decay": 1.0}}})


def _validation_frames():
    # Category 1 holds items 1..4, category 2 items 5..6.
    items = pd.DataFrame({"item_idx": [1, 2, 3, 4, 5, 6], "category_idx": [1, 1, 1, 1, 2, 2]})
    inter = pd.DataFrame({
        "user_idx":     [1, 1, 1, 2, 2, 3],
        "item_idx":     [1, 3, 2, 4, 6, 5],
        "category_idx": [1, 1, 1, 1, 2, 2],
        "split":        ["train", "valid", "valid", "valid", "train", "test"],
        "label":        [1, 1, 0, 1, 1, 1],
    })
    histories = pd.DataFrame({"user_idx": [1], "history": [[1, 6]]})
    return inter, items, histories


def test_build_validation_groups_exclusions_and_histories():
    inter, items, histories = _validation_frames()
    vs = build_validation(inter, items, histories, targets=[1, 2], history_length=3, max_groups=10, seed=0)
    # Valid positives: (1, cat 1) -> {3}; (2, cat 1) -> {4}. Label 0 and test rows are ignored.
    assert vs.user_idx.tolist() == [1, 2] and vs.category_idx.tolist() == [1, 1]
    assert [r.tolist() for r in vs.relevant] == [[3], [4]]
    assert [e.tolist() for e in vs.exclude] == [[1], []]          # user 1 had item 1 in train
    assert vs.history.tolist() == [[1, 6, 0], [0, 0, 0]]
    assert {k: v.tolist() for k, v in vs.category_items.items()} == {1: [1, 2, 3, 4]}


def test_validation_groups_carry_the_user_slice():
    inter, items, histories = _validation_frames()
    cold = pd.DataFrame({"user_idx": [4], "item_idx": [2], "category_idx": [1], "split": ["valid"], "label": [1]})
    inter = pd.concat([inter, cold], ignore_index=True)
    # Target category 1 only: user 1 has train rows in it (warm); user 2 only in category 2,
    # which is not a target but still makes the user known (cross_category); user 4 has none.
    vs = build_validation(inter, items, histories, targets=[1], history_length=2, max_groups=10, seed=0)
    assert vs.user_idx.tolist() == [1, 2, 4]
    assert vs.user_slice.tolist() == ["warm", "cross_category", "cold_user"]
    values = np.array([0.5, 0.25, np.nan])
    assert slice_means(values, vs) == {"warm": 0.5, "cross_category": 0.25}


class _FixedVectors(nn.Module):
    """A scorer with hand-set vectors (the protocol validation_ndcg scores: user_vectors and
    item_vectors), so the expected NDCG can be computed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.items = torch.tensor([[0.0], [9.0], [1.0], [3.0], [2.0], [0.0], [0.0]])   # item i -> score i-ish
        self.users = torch.tensor([[0.0], [1.0], [-1.0]])

    def user_vectors(self, user_idx, history, category_idx):
        return self.users[user_idx]

    def item_vectors(self, item_idx):
        return self.items[item_idx]


def test_validation_ndcg_full_ranking_with_train_items_excluded():
    inter, items, histories = _validation_frames()
    vs = build_validation(inter, items, histories, targets=[1], history_length=2, max_groups=10, seed=0)
    # User 1 (vector +1): scores items 1..4 = 9, 1, 3, 2; item 1 is a train item -> excluded.
    # Ranking 3, 4, 2: relevant item 3 at rank 1 -> NDCG 1.
    # User 2 (vector -1): scores -9, -1, -3, -2 -> ranking 2, 4, 3, 1: item 4 at rank 2 -> 1/log2(3).
    ndcg, groups = validation_ndcg(_FixedVectors(), vs, k=10, device=torch.device("cpu"))
    assert groups == 2
    assert ndcg == pytest.approx((1.0 + 1.0 / np.log2(3)) / 2)
    # k = 1: only user 1 hits.
    assert validation_ndcg(_FixedVectors(), vs, k=1, device=torch.device("cpu"))[0] == pytest.approx(0.5)


def test_validation_without_groups_is_nan():
    inter, items, histories = _validation_frames()
    vs = build_validation(inter, items, histories, targets=[2], history_length=2, max_groups=10, seed=0)
    ndcg, groups = validation_ndcg(_FixedVectors(), vs, k=5, device=torch.device("cpu"))
    assert groups == 0 and math.isnan(ndcg)
