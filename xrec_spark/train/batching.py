"""From a shard's row-group chunks to the tensors of one training step.

:func:`batches` makes fixed-size batches, shuffled within windows of rows with a generator
seeded by ``(seed, epoch, rank)``, so the same epoch always yields the same batches (a resumed
run skips exactly those it had done); :func:`prefetched` builds them in a background thread
while the model steps; :func:`to_tensors` gives the dtypes the model expects.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

Chunk = dict[str, np.ndarray]
_INT_COLUMNS = ("user_idx", "item_idx", "category_idx", "history")


def mix_seed(*parts: int) -> int:
    """One seed from several ints (stable across processes, unlike hash())."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def steps_for(min_rows: int, batch_size: int) -> int:
    """Steps every rank runs in an epoch: enough batches for the smallest shard (its last batch
    may be short); larger shards drop their surplus rows for that epoch (a different surplus
    each epoch, because the order is reshuffled)."""
    return -(-int(min_rows) // int(batch_size))


def batches(chunks: Iterable[Chunk], batch_size: int, steps: int, seed: int,
            window: int = 65536, skip: int = 0) -> Iterator[Chunk]:
    """Fixed-size batches from row-group chunks, shuffled within windows of ``window`` rows.

    Yields batches ``skip`` .. ``steps - 1`` (the first ``skip`` are built and dropped, so a
    resumed run sees the same batches as an uninterrupted one). Every batch has ``batch_size``
    rows except possibly the last one when the chunks run out.
    """
    rng = np.random.default_rng(seed)
    produced = 0
    pending: list[Chunk] = []
    pending_rows = 0

    def emit(buffer: Chunk, final: bool) -> Iterator[Chunk]:
        nonlocal produced
        n = len(next(iter(buffer.values())))
        perm = rng.permutation(n)
        buffer = {k: v[perm] for k, v in buffer.items()}
        full = n // batch_size
        for b in range(full + (1 if final and n % batch_size else 0)):
            if produced >= steps:
                return
            if produced >= skip:
                yield {k: v[b * batch_size:(b + 1) * batch_size] for k, v in buffer.items()}
            produced += 1
        if not final:
            pending.append({k: v[full * batch_size:] for k, v in buffer.items()})

    for chunk in chunks:
        pending.append(chunk)
        pending_rows += len(next(iter(chunk.values())))
        if pending_rows >= window:
            buffer = _concat(pending)
            pending.clear()
            yield from emit(buffer, final=False)
            pending_rows = sum(len(next(iter(c.values()))) for c in pending)
        if produced >= steps:
            return
    if pending and produced < steps:
        yield from emit(_concat(pending), final=True)


def _concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


# ----------------------------------------------------------------------------------- prefetch


_DONE = object()


@contextmanager
def prefetched(items: Iterable[object], depth: int = 4) -> Iterator[Iterator[object]]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead.

    Parquet decoding and batch assembly release the GIL for most of their time, so they
    overlap the model step. An exception in the producer is re-raised in the consumer; leaving
    the ``with`` block early stops the producer.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            failure.append(e)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            while not stop.is_set():
                try:
                    q.put(_DONE, timeout=0.1)
                    break
                except queue.Full:
                    continue

    thread = threading.Thread(target=produce, name="xrec-prefetch", daemon=True)
    thread.start()

    def consume() -> Iterator[object]:
        while True:
            item = q.get()
            if item is _DONE:
                if failure:
                    raise failure[0]
                return
            yield item

    try:
        yield consume()
    finally:
        stop.set()
        thread.join(timeout=30)


def to_tensors(batch: Mapping[str, np.ndarray]) -> dict[str, "torch.Tensor"]:
    """A numpy batch as torch tensors: ids and history int64, label and weight float32.

    Shapes: ``user_idx, item_idx, category_idx, label, weight: [B]``; ``history: [B, L]``.
    """
    import torch

    out = {}
    for name, arr in batch.items():
        dtype = np.int64 if name in _INT_COLUMNS else np.float32
        arr = np.ascontiguousarray(arr, dtype=dtype)
        if not arr.flags.writeable:   # zero-copy views of Arrow buffers are read-only
            arr = arr.copy()
        out[name] = torch.from_numpy(arr)
    return out
