"""Mult-DAE (Liang et al., WWW 2018): a denoising autoencoder over users' multi-hot interactions.

A user's row x (1 for each train positive among ``N`` items) is L2-normalised, half of it
dropped (``dropout``), encoded as h = tanh(W_e x + b_e) ``[H]`` and decoded to one logit per item
W_d h + b_d ``[N]``; training maximises the multinomial log-likelihood of the row,
Σ_i x_i log softmax(logits)_i. Learning to rebuild a whole profile from part of it is the
profile-completion task the recommender's own recipe trains for; the decoder's rows W_d
``[N, H]`` are item representations learnt across every category at once.

Pure torch (no Spark): the evaluation's ``dae`` baseline fits it on the driver.

Shapes: ``B`` users in a batch, ``N`` items, ``H`` hidden units.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AutoencoderSettings:
    """What one Mult-DAE fit uses (the evaluation searches ``hidden``; the rest is fixed)."""

    hidden: int = 200
    dropout: float = 0.5
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    seed: int = 0


class MultDAE(nn.Module):
    """x ``[B, N]`` (0/1) -> item logits ``[B, N]``; see the module docstring.

    Example::

        dae = MultDAE(n_items=5, hidden=3, dropout=0.5)
        dae(torch.tensor([[1.0, 0, 1, 0, 0]])).shape  # (1, 5)
    """

    def __init__(self, n_items: int, hidden: int, dropout: float) -> None:
        super().__init__()
        if n_items < 1 or hidden < 1:
            raise ValueError(f"MultDAE needs n_items >= 1 and hidden >= 1; got {n_items}, {hidden}")
        self.encoder = nn.Linear(n_items, hidden)
        self.decoder = nn.Linear(hidden, n_items)
        self.dropout = dropout

    def encode(self, x: Tensor) -> Tensor:
        """h ``[B, H]``: the normalised, (in training) dropped-out row through the encoder."""
        x = F.dropout(F.normalize(x, dim=1), self.dropout, self.training)
        return torch.tanh(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encode(x))

    def scores(self, x: Tensor, columns: Tensor) -> Tensor:
        """Logits of the items ``columns`` ``[C]`` only, ``[B, C]`` (eval mode: no dropout)."""
        h = self.encode(x)
        return h @ self.decoder.weight[columns].T + self.decoder.bias[columns]


def multinomial_nll(logits: Tensor, x: Tensor) -> Tensor:
    """Mean over users of −Σ_i x_i log softmax(logits)_i."""
    return -(F.log_softmax(logits, dim=1) * x).sum(1).mean()


def dense_rows(rows: Sequence[np.ndarray], n_items: int) -> Tensor:
    """Multi-hot ``[len(rows), n_items]`` float32 from each user's column indices."""
    x = torch.zeros(len(rows), n_items)
    for r, cols in enumerate(rows):
        x[r, torch.as_tensor(cols, dtype=torch.long)] = 1.0
    return x


def fit_autoencoder(rows: Sequence[np.ndarray], n_items: int, settings: AutoencoderSettings,
                    on_epoch: Callable[[int, MultDAE], float] | None = None,
                    every: int = 5) -> tuple[MultDAE, list[tuple[int, float, float]]]:
    """Train a :class:`MultDAE` on users' positive columns ``rows`` (each an array of indices
    into ``0..n_items-1``; empty rows are skipped).

    ``on_epoch(epoch, model)`` (model in eval mode) scores the model every ``every`` epochs and
    after the last; the returned model is the best-scoring one (the last without
    ``on_epoch``). Returns (model, [(epoch, mean train loss, score or nan), ...]).
    """
    users = [np.asarray(r, dtype=np.int64) for r in rows if len(r)]
    if not users:
        raise ValueError("the autoencoder has no user with a positive among its items to learn from")
    gen = torch.Generator().manual_seed(settings.seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)   # dropout masks; the caller's global RNG is restored below
    try:
        model = MultDAE(n_items, settings.hidden, settings.dropout)
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        x_all = dense_rows(users, n_items)
        history: list[tuple[int, float, float]] = []
        best_score, best_state = -math.inf, None
        for epoch in range(1, settings.epochs + 1):
            model.train()
            total = 0.0
            for batch in torch.randperm(len(users), generator=gen).split(settings.batch_size):
                loss = multinomial_nll(model(x_all[batch]), x_all[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch)
            score = math.nan
            if on_epoch is not None and (epoch % every == 0 or epoch == settings.epochs):
                model.eval()
                with torch.no_grad():
                    score = float(on_epoch(epoch, model))
                if score > best_score:
                    best_score = score
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append((epoch, total / len(users), score))
        if best_state is not None:
            model.load_state_dict(best_state)
        return model.eval(), history
    finally:
        torch.random.set_rng_state(torch_state)


def profile_item_vectors(profiles: Sequence[np.ndarray], items: np.ndarray, dim: int,
                         settings: AutoencoderSettings) -> Tensor:
    """Item vectors ``[len(items), dim]`` learnt by a Mult-DAE of ``dim`` hidden units from users'
    ``profiles`` (arrays of item ids; ids not in ``items`` are left out): the decoder's row of
    each of ``items``, in that order. Rows start the recommender's item id embeddings
    (``model.init_from: autoencoder``) with the geometry of profile completion.
    """
    items = np.asarray(items, dtype=np.int64)
    column = np.full(int(items.max()) + 1 if len(items) else 1, -1, dtype=np.int64)
    column[items] = np.arange(len(items))
    rows = []
    for profile in profiles:
        ids = np.asarray(profile, dtype=np.int64)
        ids = ids[(ids > 0) & (ids < len(column))]
        cols = column[ids]
        rows.append(np.unique(cols[cols >= 0]))
    model, _ = fit_autoencoder(rows, len(items), dataclasses.replace(settings, hidden=dim))
    return model.decoder.weight.detach().clone()
