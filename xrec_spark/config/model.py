"""The ``model`` section: towers, encoders, heads and the loss."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, model_validator

from xrec_spark.config.base import _Section


class HistoryEncoderKind(str, Enum):
    NONE = "none"
    MEAN = "mean"
    ATTENTION = "attention"
    GRU = "gru"
    # Attention whose query is the *target* category: a user's books history weighs
    # differently when scoring electronics than when scoring music.
    CATEGORY_ATTENTION = "category_attention"


class BottomKind(str, Enum):
    SHARED = "shared"
    MMOE = "mmoe"
    PLE = "ple"


class ContentEncoderKind(str, Enum):
    NONE = "none"
    HASHED = "hashed"
    SENTENCE = "sentence"


class FusionKind(str, Enum):
    CONCAT = "concat"
    GATED = "gated"


class LossKind(str, Enum):
    BCE = "bce"
    SAMPLED_SOFTMAX = "sampled_softmax"
    SOFTMAX = "softmax"


class InitFrom(str, Enum):
    NONE = "none"
    # Item id rows start at the item vectors of a Mult-DAE fitted on the users' train profiles.
    AUTOENCODER = "autoencoder"


class TaskWeighting(str, Enum):
    UNIFORM = "uniform"
    SIZE = "size"
    UNCERTAINTY = "uncertainty"


class ModelConfig(_Section):
    embedding_dim: int = Field(64, ge=1)
    hidden_dim: int = Field(128, ge=1)
    history_encoder: HistoryEncoderKind = HistoryEncoderKind.MEAN
    bottom: BottomKind = BottomKind.SHARED
    experts: int = Field(4, ge=1)
    # bottom=ple: experts owned by each category, gated with the shared ones (Tang et al. 2020).
    specific_experts: int = Field(1, ge=1)
    content_encoder: ContentEncoderKind = ContentEncoderKind.HASHED
    hash_buckets: int = Field(2**18, ge=16)
    fusion: FusionKind = FusionKind.CONCAT
    id_dropout: float = Field(0.1, ge=0.0, le=1.0)
    share_across_categories: bool = True
    loss: LossKind = LossKind.BCE
    task_weighting: TaskWeighting = TaskWeighting.UNIFORM
    temperature: float = Field(0.1, gt=0)
    distill: bool = False
    # Hashed n-gram ids kept per item text (word unigrams, then bigrams, then char trigrams).
    max_tokens: int = Field(48, ge=1)
    # Seed of the model's own generator (initialisation and id-dropout masks).
    seed: int = 0
    # distill: after the teacher, the training job fits a small two-tower student
    # (student_dim wide, mean-pooled history, shared bottom) on the teacher's scores: a
    # listwise KL over each example's category (the batch's items plus distill_pool items drawn
    # from it) at the model's temperature, plus the scores' MSE, for distill_epochs passes at
    # distill_lr. It is logged as its own run (gold.runs, MLflow) with the teacher as parent and
    # served with batch.model=student: cheaper vectors, candidates and memory.
    # 32 by default: on MovieLens valid a 16-wide student (and a 16-wide model trained on the
    # labels) stayed below the popularity prior; 32 kept it (BENCHMARKS.md, Distillation).
    student_dim: int = Field(32, ge=1)
    distill_epochs: int = Field(2, ge=1)
    distill_lr: float = Field(3e-3, gt=0)
    distill_pool: int = Field(512, ge=0)
    # Weight of the scores' MSE beside the listwise KL (0: the ranking alone).
    distill_pointwise: float = Field(1.0, ge=0)
    # The listwise KL also covers each batch user's top distill_top items of the teacher in the
    # category (ranking distillation, Tang & Wang 2018): the head of the list is what a top-K
    # serves, and a uniform pool rarely reaches it.
    distill_top: int = Field(50, ge=0)
    # score = b(i) + <f_k(h_u), g(i)>: a per-item bias that starts at log(1 + train_count), with
    # the dot product starting at 0 (heads zero-initialised), so an untrained model ranks
    # exactly like per-category popularity. Exported as one extra vector dimension.
    item_bias: bool = False
    # loss=softmax: categories with at most this many items are ranked against all of them;
    # larger ones against a uniform pool of softmax_pool items (plus the batch's positives),
    # with the log-Q correction, so a step costs the same whatever a category holds (on Ciao's
    # valid split 4,096 was level with the whole category at 1.3-1.4x the speed: BENCHMARKS.md).
    softmax_full_max_items: int = Field(4096, ge=1)
    softmax_pool: int = Field(4096, ge=1)
    # Items with fewer train positives than this own no id row: they are scored from category,
    # popularity and content (an id row that one example trains only memorises it).
    min_item_count: int = Field(0, ge=0)
    # Id, bias and hashed-text tables with sparse gradients (SparseAdam; gloo all-reduces them
    # sparsely under DDP): a step then costs what the batch touches, not what the catalogue
    # holds. Off for nccl, which has no sparse all-reduce.
    sparse_embeddings: bool = False
    # The hashed-text table too (with sparse_embeddings). Off: it has hash_buckets rows whatever
    # the catalogue, and a step's items bring more token rows than that (28 pools x 2,048 items x
    # ~16 tokens into 16k buckets), so its dense gradient is cheaper than sorting a sparse one and
    # costs the same at any catalogue size (bench/model.py, pool 2,048: 1M/100k samples/s 0.91-0.92 vs 0.80).
    sparse_text: bool = False
    # Share of training rows whose user id and whole history are dropped, so the model also
    # learns to rank for a user it knows nothing of (cold users: popularity plus what the
    # category's head learned for them), not only for users with a history.
    history_dropout: float = Field(0.0, ge=0.0, le=1.0)
    # Learning-rate factor of the item bias b(i) (0 keeps the popularity prior fixed, so that
    # training only learns the user-item part on top of it).
    item_bias_lr_scale: float = Field(1.0, ge=0.0)
    # A row per user added to the history encoding. False: the user is their history alone, as
    # in EASE or Mult-DAE; no row that memorises a user's train items, and a user who arrives
    # after training is served like one who was there.
    user_ids: bool = True
    # Share of history items dropped from each training row (Mult-DAE's input dropout): the
    # model learns to complete a profile from part of it instead of leaning on a few items.
    history_item_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # History items add a row of their own (zero at start) to their item-tower vector, so what
    # an item says about a user's taste may differ from how it is scored as a candidate (the
    # separate input and output item matrices of FISM, EASE's asymmetric weights, Mult-DAE).
    history_item_rows: bool = False
    # history_encoder=mean divides the sum of a user's history vectors by n^power: 1 is the mean,
    # 0.5 FISM's n^-1/2 (Kabbur et al. 2013), under which a long profile speaks louder than a
    # short one instead of being averaged to the same length.
    history_pool_power: float = Field(1.0, ge=0.0, le=1.0)
    # Where the item id rows start: random (none), or at the decoder rows of a Mult-DAE with
    # embedding_dim hidden units fitted on the users' end-of-train profiles (silver.user_history)
    # over the items that own a row (autoencoder pretraining; Liang et al. 2018).
    init_from: InitFrom = InitFrom.NONE

    @model_validator(mode="after")
    def _users_represented(self) -> "ModelConfig":
        if not self.user_ids and self.history_encoder is HistoryEncoderKind.NONE:
            raise ValueError("user_ids is false and history_encoder is none: a user would have no representation; "
                             "set user_ids: true or pick a history encoder")
        return self
