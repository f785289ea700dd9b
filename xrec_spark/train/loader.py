"""Streaming the pinned Parquet files of silver.training_examples to one rank, in batches.

One small interface, two implementations:

- ``petastorm``: ``make_batch_reader`` on the files with ``cur_shard=rank, shard_count=world``
  and an explicit ``seed`` shared by all ranks (``seed + epoch``). Without the seed petastorm
  was seen to hand one rank zero rows with no error; with it the shards are disjoint and add up
  to the table (tests/test_train_loader.py keeps checking that).
- ``arrow``: ``pyarrow.dataset`` over the same files; row groups are dealt to ranks by a seeded,
  size-balanced assignment that every rank computes identically, no coordination needed.

Both stream a rank's shard as row-group chunks in a seeded per-epoch order; :func:`batches`
turns chunks into fixed-size shuffled batches (a window shuffle, deterministic for a given
``(seed, epoch, rank)``, so a resumed run replays exactly the batches it skipped). Each shard
knows its row count before it is read (from Parquet footers), so the trainer can agree on one
step count per epoch for all ranks before the first step.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from xrec_spark.train.batching import Chunk, mix_seed

log = logging.getLogger(__name__)

# The numeric columns of silver.training_examples a batch carries (history: fixed-length list).
COLUMNS: tuple[str, ...] = ("user_idx", "item_idx", "category_idx", "label", "weight", "history")


class Shard(Protocol):
    """One rank's share of the files for one epoch."""

    rows: int   # rows this rank reads in the epoch (known before reading)

    def chunks(self) -> Iterator[Chunk]:
        """The shard's rows as column arrays, one chunk per row group, in the epoch's order."""
        ...

    def close(self) -> None:
        """Release readers and threads (also when the epoch stopped before the last chunk)."""
        ...


class Loader(Protocol):
    """Opens a rank's shard of the pinned files for one epoch; a context manager."""

    def epoch(self, epoch: int) -> Shard: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------------- files


def local_path(uri: str) -> str:
    """``file:/a/b`` or ``file:///a/b`` -> ``/a/b``; other URIs unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return parsed.path
    return uri


def _filesystem(files: Sequence[str]) -> tuple[pafs.FileSystem, list[str]]:
    if not files:
        raise ValueError("no Parquet files given: the pinned table version has no data files")
    schemes = {urlparse(f).scheme for f in files}
    if schemes <= {"", "file"}:
        return pafs.LocalFileSystem(), [local_path(f) for f in files]
    if len(schemes) > 1:
        raise ValueError(f"files mix URI schemes {sorted(schemes)}; expected one file system")
    fs, _ = pafs.FileSystem.from_uri(files[0])
    return fs, [pafs.FileSystem.from_uri(f)[1] for f in files]


def chunk_from_table(table: pa.Table, columns: Sequence[str]) -> Chunk:
    """Column arrays of an Arrow table; a list column becomes a 2-D ``[rows, length]`` array.

    Raises ValueError naming the column when a list column is not of one fixed length (the
    history arrays of silver.training_examples are padded to ``features.history_length``).
    """
    out: Chunk = {}
    for name in columns:
        if name not in table.column_names:
            raise ValueError(f"training files have no column {name!r}; columns: {table.column_names}")
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            out[name] = _fixed_list(col, name)
        elif col.null_count:
            raise ValueError(f"column {name!r} has {col.null_count} nulls; training columns must be non-null")
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _fixed_list(col: pa.Array, name: str) -> np.ndarray:
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), dtype=np.int32)
    offsets = col.offsets.to_numpy()
    lengths = np.diff(offsets)
    if col.null_count or lengths.min() != lengths.max():
        raise ValueError(f"column {name!r} must hold non-null arrays of one fixed length; got lengths "
                         f"{int(lengths.min())}..{int(lengths.max())} and {col.null_count} null arrays")
    values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    return values.reshape(n, int(lengths[0]))


def read_pinned(files: Sequence[str], base: str, columns: Sequence[str],
                partition_by: Sequence[str] = (), where: "pads.Expression | None" = None) -> pa.Table:
    """Columns of a pinned table version read with pyarrow (small tables and projections only:
    dimension tables, validation rows). Partition columns come from the Hive-style paths
    under ``base``."""
    fs, paths = _filesystem(files)
    if partition_by:
        base_path = local_path(base) if urlparse(base).scheme in ("", "file") else pafs.FileSystem.from_uri(base)[1]
        dataset = pads.dataset(paths, filesystem=fs, format="parquet",
                               partitioning=pads.partitioning(flavor="hive"), partition_base_dir=base_path)
    else:
        dataset = pads.dataset(paths, filesystem=fs, format="parquet")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"table at {base} has no column(s) {missing}; columns: {dataset.schema.names}")
    return dataset.to_table(columns=list(columns), filter=where)


# ----------------------------------------------------------------------------------- arrow


@dataclass(frozen=True)
class _RowGroup:
    path: str
    index: int
    rows: int


def _row_groups(fs: pafs.FileSystem, paths: Sequence[str]) -> list[_RowGroup]:
    groups = []
    for path in paths:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        groups.extend(_RowGroup(path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups))
    return groups


def assign_row_groups(rows: Sequence[int], world: int, seed: int) -> list[list[int]]:
    """Deal row groups (given by their row counts) to ``world`` ranks, balancing rows.

    A seeded permutation, then each group goes to the rank with the fewest rows so far
    (lowest rank on ties): deterministic, so every rank computes the same answer alone.
    Returns the row-group indexes of each rank.
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for i in order:
        r = min(range(world), key=lambda k: (load[k], k))
        out[r].append(int(i))
        load[r] += int(rows[i])
    return out


class _ArrowShard:
    def __init__(self, fs: pafs.FileSystem, groups: list[_RowGroup], columns: Sequence[str], seed: int) -> None:
        self._fs, self._groups, self._columns, self._seed = fs, groups, list(columns), seed
        self.rows = sum(g.rows for g in groups)

    def chunks(self) -> Iterator[Chunk]:
        order = np.random.default_rng(self._seed).permutation(len(self._groups))
        for i in order:
            g = self._groups[int(i)]
            with self._fs.open_input_file(g.path) as f:
                table = pq.ParquetFile(f).read_row_group(g.index, columns=self._columns)
            yield chunk_from_table(table, self._columns)

    def close(self) -> None:
        pass


class ArrowLoader:
    """pyarrow over the pinned files; row groups dealt to ranks by :func:`assign_row_groups`."""

    def __init__(self, files: Sequence[str], rank: int, world: int, seed: int,
                 columns: Sequence[str] = COLUMNS) -> None:
        self._fs, paths = _filesystem(files)
        groups = _row_groups(self._fs, paths)
        if len(groups) < world:
            raise ValueError(f"{len(groups)} row groups cannot feed {world} ranks; write the training "
                             f"table with more files (features.training_files >= {world} x a few)")
        mine = assign_row_groups([g.rows for g in groups], world, seed)[rank]
        self._groups = [groups[i] for i in mine]
        self._rank, self._seed, self._columns = rank, seed, columns

    def epoch(self, epoch: int) -> _ArrowShard:
        return _ArrowShard(self._fs, self._groups, self._columns, mix_seed(self._seed, epoch, self._rank))

    def close(self) -> None:
        pass

    def __enter__(self) -> "ArrowLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------- petastorm


def _petastorm_urls(files: Sequence[str]) -> list[str]:
    out = []
    for f in files:
        parsed = urlparse(f)
        out.append(f"file://{parsed.path}" if parsed.scheme in ("", "file") else f)
    return out


class _PetastormShard:
    def __init__(self, urls: list[str], rank: int, world: int, seed: int, columns: Sequence[str],
                 workers: int) -> None:
        from petastorm import make_batch_reader
        from petastorm.etl.dataset_metadata import load_row_groups

        self._columns = list(columns)
        with warnings.catch_warnings():
            # petastorm 0.13 calls pyarrow's legacy dataset API, which warns on every call.
            warnings.simplefilter("ignore", FutureWarning)
            # One worker thread: row groups come back in the ventilator's seeded order, which a
            # resumed run must replay. Decoding is Arrow's C++ and overlaps the model step
            # through the prefetch thread anyway.
            self._reader = make_batch_reader(
                urls, schema_fields=self._columns, cur_shard=rank, shard_count=world, seed=seed,
                shuffle_row_groups=True, num_epochs=1, workers_count=workers, reader_pool_type="thread")
            pieces = load_row_groups(self._reader.dataset)
            # petastorm keeps the row groups whose index (in load_row_groups order) is rank mod
            # world; counting them from the footers gives this shard's rows before reading. The
            # count is checked against what was read (see chunks), so a change in petastorm
            # cannot go unseen.
            footers: dict[str, pq.FileMetaData] = {}
            rows = 0
            for i, piece in enumerate(pieces):
                if i % world != rank:
                    continue
                if piece.path not in footers:
                    with self._reader.dataset.fs.open(piece.path) as f:
                        footers[piece.path] = pq.ParquetFile(f).metadata
                rows += footers[piece.path].row_group(piece.row_group).num_rows
        self.rows = rows

    def chunks(self) -> Iterator[Chunk]:
        seen = 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                for batch in self._reader:
                    chunk = {name: np.asarray(getattr(batch, name)) for name in self._columns}
                    for name, arr in chunk.items():
                        if arr.dtype == object:   # ragged list column: petastorm yields arrays of arrays
                            raise ValueError(f"column {name!r} must hold arrays of one fixed length")
                    seen += len(chunk[self._columns[0]])
                    yield chunk
        finally:
            self.close()
        if seen != self.rows:
            raise RuntimeError(f"petastorm shard read {seen} rows but its row groups hold {self.rows}; "
                               "the sharding rule of this petastorm version differs: use train.loader=arrow")

    def close(self) -> None:
        if not self._reader.stopped:
            self._reader.stop()
            self._reader.join()


class PetastormLoader:
    """petastorm ``make_batch_reader`` per epoch with ``seed = seed + epoch`` on every rank."""

    def __init__(self, files: Sequence[str], rank: int, world: int, seed: int,
                 columns: Sequence[str] = COLUMNS, workers: int = 1) -> None:
        self._urls = _petastorm_urls(files)
        if not self._urls:
            raise ValueError("no Parquet files given: the pinned table version has no data files")
        self._rank, self._world, self._seed, self._columns, self._workers = rank, world, seed, columns, workers
        self._open: list[_PetastormShard] = []

    def epoch(self, epoch: int) -> _PetastormShard:
        from petastorm.errors import NoDataAvailableError

        try:
            shard = _PetastormShard(self._urls, self._rank, self._world, self._seed + epoch,
                                    self._columns, self._workers)
        except NoDataAvailableError as e:
            raise ValueError(f"petastorm: fewer row groups than {self._world} ranks in the training files; "
                             "write the table with more files (features.training_files) or use "
                             "train.loader=arrow") from e
        self._open.append(shard)
        return shard

    def close(self) -> None:
        while self._open:
            self._open.pop().close()

    def __enter__(self) -> "PetastormLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_loader(kind: str, files: Sequence[str], rank: int, world: int, seed: int,
                columns: Sequence[str] = COLUMNS) -> ArrowLoader | PetastormLoader:
    """The loader named by ``train.loader`` (``petastorm`` or ``arrow``)."""
    if kind == "petastorm":
        return PetastormLoader(files, rank, world, seed, columns)
    if kind == "arrow":
        return ArrowLoader(files, rank, world, seed, columns)
    raise ValueError(f"train.loader must be 'petastorm' or 'arrow'; got {kind!r}")
