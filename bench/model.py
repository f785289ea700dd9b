"""Forward+backward throughput of the cross-category model against a plain two-tower baseline.

Usage (from the repository root):

    .venv/bin/python bench/model.py                      # defaults: batch 4096, 2 threads
    .venv/bin/python bench/model.py --set model.history_encoder=gru --steps 5

Both models see the same synthetic batches (Ciao-like sizes: 10k users, 100k items, 28
categories, 20-item histories, hashed titles). The baseline is a dot product of a user and an
item id embedding of the same size, trained with the same BCE loss. Prints the configuration,
samples/s for forward+backward (and with an Adam step), and the ratio. Model and baseline
steps alternate on the same batches and medians are reported, so the ratio holds up on a
machine shared with other work (the absolute figures do not: the load average is printed).

Catalogue scaling (``--scale-items 100000,1000000``): the model's full training step (forward,
backward, the trainer's optimizers) at each catalogue size in one run, sizes alternating on
batches of the same shape, and the ratio of samples/s at the largest size to the smallest.
With ``model.sparse_embeddings=true`` the id tables get sparse gradients and SparseAdam, so
the step should cost what the batch touches, not what the catalogue holds::

    .venv/bin/python bench/model.py --scale-items 100000,1000000 --steps 12 --warmup 2 --set model.sparse_embeddings=true \
        --set model.loss=softmax --set model.item_bias=true --set model.softmax_full_max_items=1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xrec_spark.config import build_config  # noqa: E402
from xrec_spark.model.content import ItemContent, hash_text  # noqa: E402
from xrec_spark.model.losses import MultiTaskLoss  # noqa: E402
from xrec_spark.model.towers import CrossCategoryModel, ModelSizes  # noqa: E402


class PlainTwoTower(nn.Module):
    """Baseline: score = <user_emb(u), item_emb(i)>, ``[B] x [B] -> [B]``."""

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Embedding(n_users + 1, dim)
        self.items = nn.Embedding(n_items + 1, dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.users(batch["user_idx"]) * self.items(batch["item_idx"])).sum(-1)


def synthetic_content(n_items: int, n_categories: int, buckets: int, max_tokens: int,
                      rng: np.random.Generator) -> tuple[ItemContent, np.ndarray]:
    """Hashed titles of 2-8 words (3-8 letters), categories, Zipf popularity (also returned)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, int(rng.integers(3, 9)))) for _ in range(5000)])
    titles = [" ".join(vocab[rng.integers(0, len(vocab), int(rng.integers(2, 9)))]) for _ in range(n_items)]
    tokens = np.zeros((n_items + 1, max_tokens), dtype=np.int64)
    tokens[1:] = hash_text(titles, buckets, max_tokens)
    category = np.concatenate([[0], rng.integers(1, n_categories + 1, n_items)])
    counts = np.concatenate([[0], rng.zipf(1.5, n_items).clip(max=10_000)]).astype(np.float64)
    log_pop = np.log1p(counts).astype(np.float32)
    return ItemContent(torch.from_numpy(tokens), torch.from_numpy(category), torch.from_numpy(log_pop)), counts


def synthetic_batch(sizes: ModelSizes, content: ItemContent, counts: np.ndarray, batch: int, history: int,
                    rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Items drawn by popularity (like real interaction logs), histories of 1..history items."""
    p = counts / counts.sum()
    items = torch.from_numpy(rng.choice(len(p), batch, p=p))
    hist = torch.from_numpy(rng.choice(len(p), (batch, history), p=p))
    lengths = torch.from_numpy(rng.integers(1, history + 1, batch))
    hist[torch.arange(history).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return {"user_idx": torch.from_numpy(rng.integers(1, sizes.n_users + 1, batch)), "history": hist,
            "item_idx": items, "category_idx": content.category[items],
            "label": torch.from_numpy((rng.random(batch) < 0.2).astype(np.float32)),
            "weight": torch.ones(batch)}


def time_pair(step_a, step_b, batches: list, warmup: int) -> tuple[float, float]:
    """Median seconds per step of two step functions, run alternately on the same batches.

    Alternating makes the ratio robust to load changes on a shared machine.
    """
    for b in batches[:warmup]:
        step_a(b)
        step_b(b)
    times_a, times_b = [], []
    for b in batches[warmup:]:
        for step, times in ((step_a, times_a), (step_b, times_b)):
            start = time.perf_counter()
            step(b)
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def scale_items(args: argparse.Namespace, cfg, sizes_list: list[int]) -> int:
    """Samples/s of the model's training step at each catalogue size (see the module docstring)."""
    from xrec_spark.model.losses import Catalogue
    from xrec_spark.train.optim import Optimizers

    steps = {}
    for n_items in sizes_list:
        rng = np.random.default_rng(0)
        sizes = ModelSizes(args.users, n_items, args.categories)
        content, counts = synthetic_content(n_items, args.categories, cfg.hash_buckets, cfg.max_tokens, rng)
        batches = [synthetic_batch(sizes, content, counts, args.batch, args.history, rng)
                   for _ in range(args.warmup + args.steps)]
        for b in batches:
            b["label"] = torch.ones_like(b["label"])   # softmax trains on positives
        model = CrossCategoryModel(cfg, sizes, content).train()
        loss_fn = MultiTaskLoss(cfg, args.categories)
        catalogue = Catalogue(content.category, torch.from_numpy(counts), seed=0)
        groups = [{"name": "all", "params": list(model.parameters()), "lr": 1e-3}]
        opt = Optimizers(groups, {id(p) for p in model.sparse_parameters()}, set(), weight_decay=0.0)

        def step(b: dict, model=model, loss_fn=loss_fn, catalogue=catalogue, opt=opt) -> None:
            u, v = model.encode(b)
            loss, _ = loss_fn(u, v, b, content.log_popularity, catalogue, model.item_vectors)
            opt.zero_grad()
            loss.backward()
            for part in opt.parts:
                part.step()

        steps[n_items] = (step, batches)
    times: dict[int, list[float]] = {n: [] for n in sizes_list}
    for i in range(args.warmup + args.steps):
        for n, (step, batches) in steps.items():
            start = time.perf_counter()
            step(batches[i])
            if i >= args.warmup:
                times[n].append(time.perf_counter() - start)
    print("machine:", platform.processor() or platform.machine(), f"{os.cpu_count()} cpus,",
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")
    print("model config:", json.dumps(cfg.model_dump(mode="json"), sort_keys=True))
    rates = {n: args.batch / statistics.median(t) for n, t in times.items()}
    for n, rate in rates.items():
        print(f"items {n:>10,}: {rate:12,.0f} samples/s (train step, median of {args.steps})")
    small, large = min(rates), max(rates)
    print(f"ratio samples/s at {large:,} items / at {small:,} items: {rates[large] / rates[small]:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale-items", default="", help="comma-separated catalogue sizes to compare")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--categories", type=int, default=28)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="model.key=value override")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = build_config({}, args.set).model
    if args.scale_items:
        return scale_items(args, cfg, [int(x) for x in args.scale_items.split(",")])
    rng = np.random.default_rng(0)
    sizes = ModelSizes(args.users, args.items, args.categories)
    content, counts = synthetic_content(args.items, args.categories, cfg.hash_buckets, cfg.max_tokens, rng)
    batches = [synthetic_batch(sizes, content, counts, args.batch, args.history, rng)
               for _ in range(args.warmup + args.steps)]

    model = CrossCategoryModel(cfg, sizes, content).train()
    loss_fn = MultiTaskLoss(cfg, args.categories)
    base = PlainTwoTower(args.users, args.items, cfg.embedding_dim).train()
    log_pop = content.log_popularity

    def model_fb(b: dict) -> None:
        u, v = model.encode(b)
        loss, _ = loss_fn(u, v, b, log_pop)
        model.zero_grad(set_to_none=True)
        loss.backward()

    def base_fb(b: dict) -> None:
        loss = F.binary_cross_entropy_with_logits(base(b), b["label"])
        base.zero_grad(set_to_none=True)
        loss.backward()

    model_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    base_opt = torch.optim.Adam(base.parameters(), lr=1e-3)

    def with_step(fb, opt):
        return lambda b: (fb(b), opt.step())

    results = {}
    for suffix, step_model, step_base in (("fwd+bwd", model_fb, base_fb),
                                          ("fwd+bwd+adam", with_step(model_fb, model_opt), with_step(base_fb, base_opt))):
        t_model, t_base = time_pair(step_model, step_base, batches, args.warmup)
        results[f"model {suffix}"] = args.batch / t_model
        results[f"baseline {suffix}"] = args.batch / t_base

    n_params = sum(p.numel() for p in model.parameters())
    distinct = statistics.mean(torch.unique(torch.cat([b["item_idx"], b["history"].flatten()])).numel()
                               for b in batches)
    tokens = float((content.tokens > 0).sum(1)[1:].float().mean())
    print("machine:", platform.processor() or platform.machine(), f"{os.cpu_count()} cpus,",
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")
    print("sizes:", json.dumps({"users": args.users, "items": args.items, "categories": args.categories,
                                "history": args.history, "batch": args.batch, "steps": args.steps,
                                "distinct_items_per_batch": round(distinct), "tokens_per_item": round(tokens, 1)}))
    print("model config:", json.dumps(cfg.model_dump(mode="json"), sort_keys=True))
    print(f"model parameters: {n_params:,}; baseline parameters: {sum(p.numel() for p in base.parameters()):,}")
    for name, rate in results.items():
        print(f"{name:24s} {rate:12,.0f} samples/s")
    print(f"ratio model/baseline fwd+bwd: {results['model fwd+bwd'] / results['baseline fwd+bwd']:.3f}; "
          f"with adam: {results['model fwd+bwd+adam'] / results['baseline fwd+bwd+adam']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
