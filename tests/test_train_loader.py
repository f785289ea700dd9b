"""Loaders and batching: shards add up to the table exactly, for both loaders."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from xrec_spark.tables import INTERACTIONS, TRAINING_EXAMPLES
from xrec_spark.train.batching import batches, mix_seed, prefetched, steps_for, to_tensors
from xrec_spark.train.loader import (
    ArrowLoader, PetastormLoader, assign_row_groups, chunk_from_table, open_loader, read_pinned)

LOADERS = ["petastorm", "arrow"]
N_ROWS = 300


@pytest.fixture(scope="module")
def example_files(spark, tmp_path_factory) -> list[str]:
    """silver.training_examples with 300 rows (user_idx = row number 1..300) in 7 files."""
    from xrec_spark.tables import Lakehouse

    lake = Lakehouse(spark, str(tmp_path_factory.mktemp("loader") / "lakehouse"))
    rows = [(r, r % 17 + 1, r % 3 + 1, float(r % 2), 1.0, [r, r + 1, 0]) for r in range(1, N_ROWS + 1)]
    # 7 files of unequal size: the loaders must not need equal shards.
    df = spark.createDataFrame(rows, TRAINING_EXAMPLES.schema).repartitionByRange(7, "user_idx")
    lake.overwrite(TRAINING_EXAMPLES, df)
    return lake.files(TRAINING_EXAMPLES, lake.version(TRAINING_EXAMPLES))


def _read_shard(kind: str, files: list[str], rank: int, world: int, epoch: int = 0) -> tuple[int, np.ndarray]:
    with open_loader(kind, files, rank, world, seed=11) as loader:
        shard = loader.epoch(epoch)
        users = [c["user_idx"] for c in shard.chunks()]
        shard.close()
        return shard.rows, np.concatenate(users) if users else np.zeros(0, np.int32)


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_the_table_exactly_once(example_files, kind, world):
    parts = [_read_shard(kind, example_files, rank, world) for rank in range(world)]
    together = Counter(np.concatenate([users for _, users in parts]).tolist())
    assert together == Counter(range(1, N_ROWS + 1))           # no row lost, none twice
    assert all(len(users) > 0 for _, users in parts)            # no rank starved
    assert [rows for rows, _ in parts] == [len(users) for _, users in parts]   # counted before reading


@pytest.mark.parametrize("kind", LOADERS)
def test_epoch_order_is_replayable_and_reshuffled(example_files, kind):
    _, first = _read_shard(kind, example_files, 0, 2, epoch=1)
    _, again = _read_shard(kind, example_files, 0, 2, epoch=1)
    _, other = _read_shard(kind, example_files, 0, 2, epoch=2)
    assert first.tolist() == again.tolist()
    assert sorted(first.tolist()) == sorted(other.tolist())     # same shard every epoch
    assert first.tolist() != other.tolist()                      # in another order


def test_chunks_carry_fixed_length_history_and_numeric_columns(example_files):
    with ArrowLoader(example_files, 0, 1, seed=0) as loader:
        chunk = next(loader.epoch(0).chunks())
    assert chunk["history"].shape == (len(chunk["user_idx"]), 3)
    assert chunk["history"][:, 0].tolist() == chunk["user_idx"].tolist()
    tensors = to_tensors(chunk)
    assert str(tensors["history"].dtype) == "torch.int64" and str(tensors["label"].dtype) == "torch.float32"


@pytest.mark.parametrize("loader", [ArrowLoader, PetastormLoader])
def test_more_ranks_than_row_groups_is_an_error(example_files, loader):
    with pytest.raises(ValueError, match="row groups|training_files"):
        with loader(example_files[:1], 0, 2, seed=0) as opened:
            opened.epoch(0)


def test_unknown_loader_names_the_config_key(example_files):
    with pytest.raises(ValueError, match="train.loader"):
        open_loader("spark", example_files, 0, 1, seed=0)


def test_ragged_history_is_rejected():
    table = pa.table({"history": pa.array([[1, 2], [3]], pa.list_(pa.int32()))})
    with pytest.raises(ValueError, match="history.*fixed length"):
        chunk_from_table(table, ["history"])


def test_assign_row_groups_balances_rows_and_is_deterministic():
    rows = [100, 90, 10, 10, 10, 80]
    parts = assign_row_groups(rows, 2, seed=3)
    assert parts == assign_row_groups(rows, 2, seed=3)
    assert sorted(i for p in parts for i in p) == list(range(6))
    loads = [sum(rows[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= 100                        # within one row group
    assert sum(loads) == 300


@pytest.mark.parametrize("rows, batch, expected", [(10, 4, 3), (8, 4, 2), (1, 4, 1), (0, 4, 0)])
def test_steps_for(rows, batch, expected):
    assert steps_for(rows, batch) == expected


def _chunks(n: int, size: int) -> list[dict[str, np.ndarray]]:
    ids = np.arange(n)
    return [{"user_idx": ids[i:i + size]} for i in range(0, n, size)]


def test_batches_run_exactly_the_agreed_steps_and_skip_replays():
    # 10 rows, batch 4, 3 steps: 4 + 4 + 2 rows, every row once.
    out = list(batches(_chunks(10, 3), 4, steps=3, seed=5, window=4))
    assert [len(b["user_idx"]) for b in out] == [4, 4, 2]
    assert sorted(np.concatenate([b["user_idx"] for b in out]).tolist()) == list(range(10))
    # A larger shard stops at the agreed step count.
    assert len(list(batches(_chunks(50, 7), 4, steps=3, seed=5))) == 3
    # Skipping the first 2 batches yields exactly the rest of the same sequence.
    tail = list(batches(_chunks(10, 3), 4, steps=3, seed=5, window=4, skip=2))
    assert [b["user_idx"].tolist() for b in tail] == [out[2]["user_idx"].tolist()]


def test_mix_seed_is_stable_and_distinct():
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3)
    assert len({mix_seed(13, epoch, rank) for epoch in range(5) for rank in range(4)}) == 20


def test_prefetched_passes_items_and_reraises_producer_errors():
    with prefetched(iter(range(5))) as it:
        assert list(it) == [0, 1, 2, 3, 4]

    def broken():
        yield 1
        raise ValueError("bad row group")

    with pytest.raises(ValueError, match="bad row group"):
        with prefetched(broken()) as it:
            list(it)


def test_read_pinned_restores_partition_columns(spark, tmp_path):
    from xrec_spark.tables import Lakehouse

    lake = Lakehouse(spark, str(tmp_path / "lakehouse"))
    import datetime as dt
    ts = dt.datetime(2024, 1, 1)
    rows = [(1, 10, 2, ts, None, 1, 1.0, "train", None), (2, 11, 3, ts, None, 1, 1.0, "valid", "warm"),
            (3, 12, 3, ts, None, 0, 1.0, "test", "warm")]
    lake.overwrite(INTERACTIONS, spark.createDataFrame(rows, INTERACTIONS.schema))
    files = lake.files(INTERACTIONS, lake.version(INTERACTIONS))
    import pyarrow.dataset as pads
    table = read_pinned(files, lake.path(INTERACTIONS), ["user_idx", "category_idx", "split"], ("category_idx",),
                        pads.field("split").isin(["train", "valid"]))
    got = sorted(zip(*[table.column(c).to_pylist() for c in ("user_idx", "category_idx", "split")]))
    assert got == [(1, 2, "train"), (2, 3, "valid")]
