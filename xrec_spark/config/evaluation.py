"""The ``eval`` section: the split scored, the baselines, their searches and the metrics."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from xrec_spark import names
from xrec_spark.config.base import _Section


class EvalSplit(StrEnum):
    """The held-out split ``xrec evaluate`` scores (values of silver.interactions.split)."""

    VALID = names.VALID
    TEST = names.TEST


class Baseline(StrEnum):
    """A baseline system of ``xrec evaluate`` (also its ``system`` in gold.metrics). The trained
    ones rank with a model trained as a baseline, named in ``eval.baseline_versions``."""

    POPULARITY_GLOBAL = "popularity_global"
    POPULARITY_CATEGORY = "popularity_category"
    ALS = "als"
    EASE = "ease"
    # Mult-DAE (Liang et al. 2018): a denoising autoencoder over users' train rows (opt-in).
    DAE = "dae"
    NO_SHARING = "no_sharing"
    SHARED_NO_TRANSFER = "shared_no_transfer"
    # The model's distilled student (model.distill): how much of the teacher it keeps.
    STUDENT = "student"
    # The model with its item rows started from a Mult-DAE (model.init_from=autoencoder).
    AUTOENCODER_INIT = "autoencoder_init"


TRAINED_BASELINES: tuple[Baseline, ...] = (Baseline.NO_SHARING, Baseline.SHARED_NO_TRANSFER, Baseline.STUDENT,
                                           Baseline.AUTOENCODER_INIT)
_SAFE_ID = re.compile(names.SAFE_ID_PATTERN)


class EvalConfig(_Section):
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50])
    bootstrap_samples: int = Field(1000, ge=0)
    report_dir: str = "report"
    seed: int = 5
    # Held-out split scored by `xrec evaluate`; baselines are tuned on valid whatever this is.
    split: EvalSplit = EvalSplit.TEST
    # Baseline systems (no_sharing and shared_no_transfer need their training runs, given in
    # baseline_versions).
    baselines: list[Baseline] = Field(default_factory=lambda: [
        Baseline.POPULARITY_GLOBAL, Baseline.POPULARITY_CATEGORY, Baseline.ALS, Baseline.EASE])
    # Also rank with the trained model (gold.user_embeddings / gold.item_embeddings).
    include_model: bool = True
    # Also score the served lists of gold.candidates (latest run_date) as system "candidates".
    include_candidates: bool = False
    # model_version (gold.runs) of each trained baseline in baselines, e.g.
    # {no_sharing: <version>, shared_no_transfer: <version>}.
    baseline_versions: dict[Baseline, str] = Field(default_factory=dict)
    # Model version to evaluate; None = the latest run in gold.runs.
    model_version: str | None = None
    # gold.metrics partition key; None = derived from split, systems, model and input versions.
    # Written into a replaceWhere predicate, so only letters, digits and . _ : + -.
    eval_id: str | None = None
    # ALS staged search, every point chosen by NDCG@tune_k on valid: stage 1 fits
    # als_reg_params x als_alphas at als_base_rank, stage 2 fits als_ranks at the best
    # (reg, alpha). These defaults are the full search (bench/quality.py runs them); the demo
    # config (conf/local.yaml) sets a small one.
    als_base_rank: int = Field(64, ge=1)
    als_reg_params: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0])
    als_alphas: list[float] = Field(default_factory=lambda: [1.0, 5.0, 20.0])
    als_ranks: list[int] = Field(default_factory=lambda: [32, 64, 128])
    als_max_iter: int = Field(15, ge=1)
    # EASE (closed-form item-item) over the ease_items most popular train items of all
    # categories; lambda (L2) chosen on valid from ease_lambdas. Driver memory ~ 4 x N^2 floats.
    ease_items: int = Field(10_000, ge=1)
    ease_lambdas: list[float] = Field(default_factory=lambda: [10.0, 50.0, 200.0, 1000.0, 5000.0])
    # Mult-DAE over the dae_items most popular train items of all categories (opt-in: add
    # "dae" to baselines): the hidden size chosen on valid from dae_hidden, the epoch by valid
    # NDCG@tune_k every dae_eval_every epochs up to dae_epochs; input dropout dae_dropout.
    dae_items: int = Field(10_000, ge=1)
    dae_hidden: list[int] = Field(default_factory=lambda: [200, 600])
    dae_epochs: int = Field(50, ge=1)
    dae_eval_every: int = Field(5, ge=1)
    dae_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    tune_k: int = Field(10, ge=1)
    # Users of one category ranked per kernel call in full ranking, for every system (memory:
    # this many users x the largest K kept, plus the kernel's tiles).
    users_per_block: int = Field(1024, ge=1)

    @field_validator("eval_id")
    @classmethod
    def _safe_eval_id(cls, value: str | None) -> str | None:
        if value is not None and not _SAFE_ID.match(value):
            raise ValueError("may only hold letters, digits and . _ : + - (it goes into a replaceWhere predicate)")
        return value

    @model_validator(mode="after")
    def _known_values(self) -> "EvalConfig":
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a non-empty list of cut-offs >= 1; got {self.ks}")
        for key in ("als_reg_params", "als_alphas", "als_ranks", "ease_lambdas", "dae_hidden"):
            values = getattr(self, key)
            if not values or min(values) <= 0:
                raise ValueError(f"{key} must be a non-empty list of positive values; got {values}")
        return self

    @model_validator(mode="after")
    def _systems_to_evaluate(self) -> "EvalConfig":
        # Checked here, not when the job reaches the system: the ALS search runs first and takes
        # minutes.
        if not self.baselines and not self.include_model and not self.include_candidates:
            raise ValueError("nothing to evaluate: baselines is empty and include_model and include_candidates "
                             "are false")
        missing = [b.value for b in self.baselines if b in TRAINED_BASELINES and not self.baseline_versions.get(b)]
        if missing:
            raise ValueError(f"baselines has {missing} but baseline_versions has no model_version for them: train "
                             "them (bench/quality.py does) and pass {name: model_version}")
        untrained = [b.value for b in self.baseline_versions if b not in TRAINED_BASELINES]
        if untrained:
            raise ValueError(f"baseline_versions has {untrained}: only the trained baselines "
                             f"{[b.value for b in TRAINED_BASELINES]} have a model_version")
        return self
