"""Optimisers of one training rank: dense AdamW + SparseAdam stepped as one, their LR schedule,
and mixed precision on CUDA.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable

import torch


class Optimizers:
    """AdamW over the dense parameters and SparseAdam over the sparse-gradient embedding tables
    (``model.sparse_embeddings``), stepped, scheduled and checkpointed as one optimizer.

    Weight decay applies to the dense part (never the item bias); SparseAdam has none, so the
    sparse tables are held back by ``model.min_item_count`` and id-dropout instead.
    """

    def __init__(self, groups: list[dict], sparse: set[int], no_decay: set[int], weight_decay: float,
                 no_decay_lr_scale: float = 1.0) -> None:
        def part(want_sparse: bool) -> list[dict]:
            picked = [{**g, "params": [p for p in g["params"] if (id(p) in sparse) == want_sparse]} for g in groups]
            return [g for g in picked if g["params"]]

        dense, sparse_groups = part(False), part(True)
        self.parts: list[torch.optim.Optimizer] = []
        if dense:
            params = [p for g in dense for p in g["params"]]
            self.parts.append(torch.optim.AdamW(no_decay_groups(dense, no_decay, no_decay_lr_scale),
                                                weight_decay=weight_decay, fused=fused_capable(params)))
        if sparse_groups:
            self.parts.append(torch.optim.SparseAdam([{k: v for k, v in g.items() if k != "weight_decay"}
                                                      for g in sparse_groups]))
        self.dense_params = [p for g in dense for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [opt.state_dict() for opt in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for opt, saved in zip(self.parts, state["parts"], strict=True):
            opt.load_state_dict(saved)


def fused_capable(params: list[torch.Tensor]) -> bool:
    """Whether AdamW can take its fused kernel: one update over every tensor instead of a dozen
    elementwise passes per tensor (Ciao, where the 105k-row item table's dense update was a fifth
    of the step: +19% samples/s in a one-rank profile, +4% in the 2-rank training job;
    BENCHMARKS.md "Ciao's training step")."""
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


class Schedulers:
    """One LambdaLR per part of :class:`Optimizers`, with the same factor."""

    def __init__(self, optimizers: Optimizers, factor: Callable[[int], float]) -> None:
        self.parts = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers.parts]

    def step(self) -> None:
        for s in self.parts:
            s.step()

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [s.state_dict() for s in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, saved in zip(self.parts, state["parts"], strict=True):
            s.load_state_dict(saved)


def no_decay_groups(groups: list[dict], keep: set[int], lr_scale: float = 1.0) -> list[dict]:
    """Split the parameters whose id is in ``keep`` into their own groups with weight_decay 0
    and ``lr * lr_scale`` (the item bias: decaying it would pull the popularity prior towards 0)."""
    out = []
    for g in groups:
        decayed = [p for p in g["params"] if id(p) not in keep]
        kept = [p for p in g["params"] if id(p) in keep]
        out += [{**g, "params": decayed}] if decayed else []
        out += [{**g, "params": kept, "name": g.get("name", "") + "/no_decay", "weight_decay": 0.0,
                 "lr": g["lr"] * lr_scale}] if kept else []
    return out


class Amp:
    """Mixed precision on CUDA only: bf16 where supported, else fp16 with a grad scaler."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self) -> Any:
        return torch.autocast("cuda", dtype=self.dtype) if self.enabled else nullcontext()


def warmup_cosine(total_steps: int, floor: float = 0.1) -> Callable[[int], float]:
    """LR factor: linear warm-up over min(100, 5%) of the steps, then cosine down to ``floor``."""
    warmup = max(1, min(100, total_steps // 20))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor
