"""The two towers and the cross-category model that wires them: s(u, i, k) = b(i) + <f_k(h_u), g(i)>.

Shapes: ``B`` batch, ``L`` history length, ``D`` embedding_dim, ``K`` categories. Dense ids
start at 1; 0 is padding. An id above the embedding table (a user or item added after
training) or 0 has no id embedding: the item is scored from its content, the user from history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from xrec_spark.config import ContentEncoderKind, HistoryEncoderKind, ModelConfig
from xrec_spark.model.content import ItemContent
from xrec_spark.model.encoders import ContentEncoder, HistoryEncoder
from xrec_spark.model.heads import CategoryHeads, group_by_category, per_category
from xrec_spark.model.inputs import check_batch, check_category, check_items
from xrec_spark.model.layers import IdDropout, init_module, lookup, unique_items

@dataclass(frozen=True)
class ModelSizes:
    """Largest dense index of each kind; embedding tables have ``n + 1`` rows (row 0 = padding)."""

    n_users: int
    n_items: int
    n_categories: int

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_categories"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"ModelSizes.{name} must be int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"ModelSizes.{name} must be >= 1, got {value}")


class ItemTower(nn.Module):
    """g(i) = id(i)·keep + content(i) + category(i) + popularity(i): item_idx long ``[N]`` -> ``[N, D]``.

    Content lives in non-persistent buffers (swap with :meth:`set_content`); an item above
    ``n_items`` or with its id dropped is represented by content, category and popularity; an
    item of a category above ``n_categories`` (added after training) by content and popularity.

    Example::

        tower = ItemTower(ModelConfig(embedding_dim=8, hash_buckets=64), n_items=5, n_categories=2,
                          content=content, dropout=IdDropout(0.1, torch.Generator()))
        tower(torch.tensor([1, 6])).shape  # (2, 8) when content has >= 7 rows
    """

    def __init__(self, cfg: ModelConfig, n_items: int, n_categories: int, content: ItemContent,
                 dropout: IdDropout) -> None:
        super().__init__()
        d = cfg.embedding_dim
        self.d_txt = None if content.text_vector is None else int(content.text_vector.shape[1])
        self.d_img = None if content.image is None else int(content.image.shape[1])
        sparse = cfg.sparse_embeddings
        self.ids = nn.Embedding(n_items + 1, d, padding_idx=0, sparse=sparse)
        self.category = nn.Embedding(n_categories + 1, d, padding_idx=0)
        self.popularity = nn.Linear(1, d)
        has_content = cfg.content_encoder is not ContentEncoderKind.NONE or self.d_img is not None
        self.content = (ContentEncoder(cfg.content_encoder, cfg.fusion, d, cfg.hidden_dim, cfg.hash_buckets,
                                       self.d_txt if cfg.content_encoder is ContentEncoderKind.SENTENCE else None,
                                       self.d_img, sparse and cfg.sparse_text) if has_content else None)
        self.dropout = dropout
        self.min_log_count = math.log1p(cfg.min_item_count) - 1e-6
        # b(i): a row per trained item with train positives; every other item (no positive in
        # train, or added after training) takes its category's prior for unseen items.
        self.bias = nn.Embedding(n_items + 1, 1, sparse=sparse) if cfg.item_bias else None
        self.unseen_bias = nn.Embedding(n_categories + 1, 1) if cfg.item_bias else None
        self.set_content(content)

    @torch.no_grad()
    def init_bias(self) -> None:
        """b(i) = log(1 + train_count(i)); the unseen prior log(1 + 0) = 0: popularity order."""
        if self.bias is None:
            return
        rows = self.bias.num_embeddings
        log_pop = self.content_log_popularity[:rows].to(self.bias.weight.dtype)
        self.bias.weight.zero_()
        self.bias.weight[: log_pop.shape[0], 0] = log_pop
        self.unseen_bias.weight.zero_()

    def item_bias(self, item_idx: Tensor) -> Tensor:
        """b(i) ``[N]`` (zeros without ``cfg.item_bias``)."""
        if self.bias is None:
            return torch.zeros(item_idx.shape[0], device=item_idx.device)
        counted = (self.content_log_popularity[item_idx] > 0) & (item_idx < self.bias.num_embeddings)
        own = lookup(self.bias, item_idx).squeeze(-1)
        prior = lookup(self.unseen_bias, self.content_category[item_idx]).squeeze(-1)
        return torch.where(counted, own, prior)

    def set_content(self, content: ItemContent) -> None:
        """Replace the per-item content (e.g. with new items appended); vector sizes must match."""
        got_txt = None if content.text_vector is None else int(content.text_vector.shape[1])
        got_img = None if content.image is None else int(content.image.shape[1])
        if got_img != self.d_img or (self.content is not None and self.content.text_proj is not None
                                     and got_txt != self.d_txt):
            raise ValueError(f"item content has image dim {got_img} and text_vector dim {got_txt}; the model "
                             f"was built with image {self.d_img}, text_vector {self.d_txt}")
        device = self.ids.weight.device
        for name in ("tokens", "category", "log_popularity", "image", "text_vector"):
            value = getattr(content, name)
            self.register_buffer(f"content_{name}", None if value is None else value.to(device), persistent=False)

    @property
    def content_rows(self) -> int:
        return int(self.content_tokens.shape[0])

    def has_id_row(self, item_idx: Tensor) -> Tensor:
        """1.0 for items with enough train positives (``cfg.min_item_count``) to own id rows, else 0."""
        return (self.content_log_popularity[item_idx] >= self.min_log_count).to(self.ids.weight.dtype)

    def forward(self, item_idx: Tensor) -> Tensor:
        keep = self.dropout(item_idx.shape[0], item_idx.device)
        if self.min_log_count > 0:
            keep = keep * self.has_id_row(item_idx).unsqueeze(-1)
        out = lookup(self.ids, item_idx) * keep
        # lookup: an item of a category added after training (above n_categories) gets a zero
        # category vector instead of an index error, like an item above n_items gets no id vector.
        out = out + lookup(self.category, self.content_category[item_idx])
        out = out + self.popularity(self.content_log_popularity[item_idx].unsqueeze(-1))
        if self.content is not None:
            text = None if self.content_text_vector is None else self.content_text_vector[item_idx]
            image = None if self.content_image is None else self.content_image[item_idx]
            out = out + self.content(self.content_tokens[item_idx], text, image)
        return out


class UserTower(nn.Module):
    """h_u = user_id(u)·keep + HistoryEncoder(g(history)); without ``user_ids`` the history alone.

    Inputs: user_idx long ``[B]``; the history as rows of ``table`` ``[U, D]`` (item-tower vectors
    of the batch's distinct items) picked by ``index`` long ``[B, L]``; mask bool ``[B, L]``.
    Output ``[B, D]``. A user above ``n_users`` or 0 has only the history part.

    Example::

        tower = UserTower(n_users=10, dim=8, kind=HistoryEncoderKind.MEAN, dropout=drop)
        tower(torch.tensor([1, 11]), torch.zeros(3, 8), torch.zeros(2, 5, dtype=torch.long),
              torch.ones(2, 5, dtype=torch.bool)).shape  # (2, 8)
    """

    def __init__(self, n_users: int, dim: int, kind: HistoryEncoderKind, dropout: IdDropout,
                 n_categories: int = 0, sparse: bool = False, user_ids: bool = True,
                 pool_power: float = 1.0) -> None:
        super().__init__()
        self.ids = nn.Embedding(n_users + 1, dim, padding_idx=0, sparse=sparse) if user_ids else None
        self.history = (None if kind is HistoryEncoderKind.NONE
                        else HistoryEncoder(kind, dim, n_categories, pool_power))
        self.dropout = dropout

    def forward(self, user_idx: Tensor, table: Tensor, index: Tensor, mask: Tensor,
                target: Tensor | None = None, item_category: Tensor | None = None) -> Tensor:
        out = 0 if self.history is None else self.history.pool(table, index, mask, target, item_category)
        if self.ids is not None:
            out = out + lookup(self.ids, user_idx) * self.dropout(user_idx.shape[0], user_idx.device)
        return out  # type: ignore[return-value]


class CrossCategoryModel(nn.Module):
    """Two-tower multi-task model: score = <f_k(h_u), g(i)> for the example's category k.

    ``encode(batch)`` -> (u ``[B, D]``, v ``[B, D]``); ``forward(batch)`` -> scores ``[B]``. The batch
    holds user_idx ``[B]``, history ``[B, L]`` (0-padded), item_idx ``[B]``, category_idx ``[B]``
    (all long). History items go through the same item tower as candidates (Siamese). With
    ``cfg.share_across_categories=False`` every category has its own user tower and bottom and
    reads only its own items from the history (the no-sharing baseline); the item tower is one
    module, but each item belongs to one category, so its id row is trained by that category only.
    """

    def __init__(self, cfg: ModelConfig, sizes: ModelSizes, content: ItemContent) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"CrossCategoryModel needs a ModelConfig, got {type(cfg).__name__}")
        self.cfg, self.sizes = cfg, sizes
        dropout = IdDropout(cfg.id_dropout, torch.Generator().manual_seed(cfg.seed + 1))
        self.item_tower = ItemTower(cfg, sizes.n_items, sizes.n_categories, content, dropout)
        d, kind = cfg.embedding_dim, cfg.history_encoder
        n_cat, sparse = sizes.n_categories, cfg.sparse_embeddings
        ids, power = cfg.user_ids, cfg.history_pool_power
        self.user_tower = (UserTower(sizes.n_users, d, kind, dropout, n_cat, sparse, ids, power)
                           if cfg.share_across_categories else None)
        self.user_towers = None if cfg.share_across_categories else nn.ModuleDict(
            {str(k): UserTower(sizes.n_users, d, kind, dropout, n_cat, sparse, ids, power)
             for k in range(1, n_cat + 1)})
        self.heads = CategoryHeads(sizes.n_categories, d, cfg.hidden_dim, cfg.bottom, cfg.experts,
                                   shared=cfg.share_across_categories, n_specific=cfg.specific_experts)
        self.history_rows = (nn.Embedding(sizes.n_items + 1, d, padding_idx=0, sparse=sparse)
                             if cfg.history_item_rows and kind is not HistoryEncoderKind.NONE else None)
        self.reset_parameters(torch.Generator().manual_seed(cfg.seed))

    # ------------------------------------------------------------------ parameters

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Initialise every parameter from ``generator`` (the global RNG is not touched).

        With ``cfg.item_bias`` the heads' maps and the user id rows start at zero, so the score
        starts as the bias alone (popularity order) and training adds the user-item part to it.
        """
        for module in self.modules():
            init_module(module, generator)
        if self.history_rows is not None:
            with torch.no_grad():   # history items start as their candidate vectors
                self.history_rows.weight.zero_()
        if self.cfg.item_bias:
            self.item_tower.init_bias()
            towers = [self.user_tower] if self.user_tower is not None else list(self.user_towers.values())
            with torch.no_grad():
                for k in range(1, self.sizes.n_categories + 1):
                    self.heads.head(k).linear.weight.zero_()
                # User id rows start at zero too: a user without train rows (cold) then adds no
                # random direction to the prior once the heads have trained.
                for tower in towers:
                    if tower.ids is not None:
                        tower.ids.weight.zero_()

    @torch.no_grad()
    def init_item_rows(self, item_idx: Tensor, vectors: Tensor) -> None:
        """Start the id rows of ``item_idx`` ``[N]`` at ``vectors`` ``[N, D]`` (e.g. an
        autoencoder's item vectors), rescaled to the initialiser's spread (std 0.1) so the id
        part keeps its weight next to the category and popularity parts."""
        table = self.item_tower.ids.weight
        scale = 0.1 / vectors.std().clamp_min(1e-12)
        table[item_idx.to(table.device)] = (vectors * scale).to(device=table.device, dtype=table.dtype)

    def category_parameters(self, k: int) -> list[nn.Parameter]:
        """Parameters that belong to category k alone (θ_k, its gate, its own tower when not sharing)."""
        check_category(k, self.sizes.n_categories)
        params = list(self.heads.head(k).parameters())
        if self.user_towers is not None:
            params += list(self.user_towers[str(k)].parameters())
        return params

    def head_parameters(self, categories: Iterable[int] | None = None) -> list[nn.Parameter]:
        """Per-category parameters of ``categories`` (None: all categories)."""
        ks = range(1, self.sizes.n_categories + 1) if categories is None else categories
        return [p for k in sorted(set(ks)) for p in self.category_parameters(int(k))]

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding tables built with sparse gradients (``cfg.sparse_embeddings``)."""
        return [m.weight for m in self.modules()
                if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not per-category (item tower, user tower, shared bottom)."""
        per_category = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in per_category]

    # ------------------------------------------------------------------ content / categories

    def set_content(self, content: ItemContent) -> None:
        """Swap item content (e.g. with new items appended); content is not part of the state_dict."""
        self.item_tower.set_content(content)

    def add_category(self) -> int:
        """Append an empty category K+1 (fresh head, tower, category embedding row); returns K+1.

        Rebuild optimizers afterwards: new parameters replace the category embedding.
        """
        k = self.sizes.n_categories + 1
        generator = torch.Generator().manual_seed(self.cfg.seed + 1000 + k)
        head = self.heads.new_head().to(self.item_tower.ids.weight.device)
        for module in head.modules():
            init_module(module, generator)
        self.heads.heads[str(k)] = head
        if self.user_towers is not None:
            tower = UserTower(self.sizes.n_users, self.cfg.embedding_dim, self.cfg.history_encoder,
                              self.item_tower.dropout, k, self.cfg.sparse_embeddings,
                              self.cfg.user_ids, self.cfg.history_pool_power).to(self.item_tower.ids.weight.device)
            for module in tower.modules():
                init_module(module, generator)
            self.user_towers[str(k)] = tower
        old = self.item_tower.category
        grown = nn.Embedding(k + 1, old.embedding_dim, padding_idx=0).to(old.weight.device)
        with torch.no_grad():
            grown.weight.zero_()
            grown.weight[:k] = old.weight
        self.item_tower.category = grown
        encoder = self.user_tower.history if self.user_tower is not None else None
        if encoder is not None and encoder.targeted:
            with torch.no_grad():   # the new category's query starts at zero: mean pooling
                grown_query = torch.zeros(k + 1, encoder.category_query.shape[1], device=old.weight.device)
                grown_query[:k] = encoder.category_query
            encoder.category_query = nn.Parameter(grown_query)
        if self.item_tower.unseen_bias is not None:
            prior = self.item_tower.unseen_bias
            grown_prior = nn.Embedding(k + 1, 1).to(prior.weight.device)
            with torch.no_grad():
                grown_prior.weight.zero_()
                grown_prior.weight[:k] = prior.weight
            self.item_tower.unseen_bias = grown_prior
        self.sizes = replace(self.sizes, n_categories=k)
        return k

    # ------------------------------------------------------------------ scoring

    def encode(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(u ``[B, D]`` = f_k(h_u) for the example's category k, v ``[B, D]`` = g(item))."""
        user_idx, history, item_idx, category_idx = check_batch(batch, self.sizes.n_categories, self.item_tower.content_rows)
        user_idx, history = self._drop_histories(user_idx, history)
        n = item_idx.shape[0]
        if self.cfg.history_encoder is HistoryEncoderKind.NONE:
            v = self.item_tower(item_idx)
            u = self._user_side(user_idx, history, v, torch.zeros_like(history), category_idx)
            return self._with_user_bias(u), self._with_item_bias(v, item_idx)
        # One item-tower pass over the distinct candidate and history items of the batch.
        uniq, inverse = unique_items(torch.cat([item_idx, history.reshape(-1)]), self.item_tower.content_rows)
        vectors = self.item_tower(uniq)
        index = inverse[n:].view(history.shape)
        u = self._user_side(user_idx, history, self._history_table(uniq, vectors), index, category_idx)
        return self._with_user_bias(u), self._with_item_bias(vectors[inverse[:n]], item_idx)

    def _drop_histories(self, user_idx: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        """In training, each history item is dropped with ``cfg.history_item_dropout`` and rows
        of ``cfg.history_dropout`` lose their user id and whole history."""
        if not self.training:
            return user_idx, history
        q = self.cfg.history_item_dropout
        if q > 0.0:
            gone = (torch.rand(history.shape, generator=self.item_tower.dropout.generator) < q).to(history.device)
            history = torch.where(gone, torch.zeros_like(history), history)
        if (p := self.cfg.history_dropout) == 0.0:
            return user_idx, history
        drop = (torch.rand(user_idx.shape[0], generator=self.item_tower.dropout.generator) < p).to(user_idx.device)
        return (torch.where(drop, torch.zeros_like(user_idx), user_idx),
                torch.where(drop.unsqueeze(1), torch.zeros_like(history), history))

    def _with_user_bias(self, u: Tensor) -> Tensor:
        """``[B, D] -> [B, D + 1]`` with a trailing 1 when the model has item biases."""
        return torch.cat([u, torch.ones_like(u[:, :1])], dim=1) if self.cfg.item_bias else u

    def _with_item_bias(self, v: Tensor, item_idx: Tensor) -> Tensor:
        """``[N, D] -> [N, D + 1]`` with b(i) last, so <u, v> = b(i) + <f_k(h_u), g(i)>."""
        if not self.cfg.item_bias:
            return v
        return torch.cat([v, self.item_tower.item_bias(item_idx).to(v.dtype).unsqueeze(-1)], dim=1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        u, v = self.encode(batch)
        return (u * v).sum(-1)

    def user_vectors(self, user_idx: Tensor, history: Tensor, category_idx: Tensor) -> Tensor:
        """User × category vectors ``[B, D]``: f_k(h_u) for k = category_idx."""
        batch = {"user_idx": user_idx, "history": history, "item_idx": torch.zeros_like(user_idx),
                 "category_idx": category_idx}
        user_idx, history, _, category_idx = check_batch(batch, self.sizes.n_categories, self.item_tower.content_rows)
        if self.cfg.history_encoder is HistoryEncoderKind.NONE:
            table = torch.zeros(1, self.cfg.embedding_dim, device=history.device)
            u = self._user_side(user_idx, history, table, torch.zeros_like(history), category_idx)
            return self._with_user_bias(u)
        uniq, inverse = unique_items(history.reshape(-1), self.item_tower.content_rows)
        table = self._history_table(uniq, self.item_tower(uniq))
        return self._with_user_bias(self._user_side(user_idx, history, table, inverse.view(history.shape),
                                                    category_idx))

    def item_vectors(self, item_idx: Tensor) -> Tensor:
        """Item vectors ``[B, D]`` = g(item) (``[B, D + 1]`` with b(i) last when the model has item
        biases); new items (above n_items) come from content alone."""
        check_items(item_idx, "item_idx", self.item_tower.content_rows)
        return self._with_item_bias(self.item_tower(item_idx), item_idx)

    def _history_table(self, item_idx: Tensor, vectors: Tensor) -> Tensor:
        """The vectors ``[N, D]`` of items read as history: their item-tower vectors, plus their
        own history rows (``cfg.history_item_rows``; none for items without an id row)."""
        if self.history_rows is None:
            return vectors
        return vectors + lookup(self.history_rows, item_idx) * self.item_tower.has_id_row(item_idx).unsqueeze(-1)

    def _user_side(self, user_idx: Tensor, history: Tensor, table: Tensor, index: Tensor,
                   category_idx: Tensor) -> Tensor:
        """u = f_k(h_u) ``[B, D]``; the history is rows ``index`` ``[B, L]`` of ``table`` ``[U, D]``."""
        groups = group_by_category(category_idx)
        mask = history != 0
        hist_category = self.item_tower.content_category[history]
        if self.user_tower is not None:
            h = self.user_tower(user_idx, table, index, mask, category_idx, hist_category)
            return self.heads(h, category_idx, groups)

        def one(k: int, users: Tensor, idx: Tensor, m: Tensor, cats: Tensor) -> Tensor:
            # No sharing: category k sees only its own items in the history.
            target = torch.full_like(users, k)
            h = self.user_towers[str(k)](users, table, idx, m & (cats == k), target, cats)  # type: ignore[index]
            return self.heads.forward_one(k, h)

        return per_category(groups, one, user_idx, index, mask, hist_category)
