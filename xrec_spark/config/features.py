"""The ``features`` section: positives, histories, the temporal split and negatives."""

from __future__ import annotations

from datetime import date
from enum import Enum, StrEnum

from pydantic import Field, model_validator

from xrec_spark.config.base import _Section


class NegativeStrategy(str, Enum):
    UNIFORM = "uniform"
    POPULARITY = "popularity"
    CROSS_CATEGORY = "cross_category"


class HistoryAsOf(StrEnum):
    """Where a training example's history stops (``features.history_as_of``)."""

    EVENT = "event"
    DAY = "day"
    # The user's end-of-train history (the one served) without the example's own item: the
    # model learns to complete a profile, as EASE and Mult-DAE do, instead of predicting the
    # next item from a shorter past that serving never shows it.
    PROFILE = "profile"


class SplitConfig(_Section):
    """Global temporal split: by fractions of events in time order, or by explicit dates."""

    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    valid_start: date | None = None
    test_start: date | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "SplitConfig":
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("valid_fraction + test_fraction must be < 1")
        if (self.valid_start is None) != (self.test_start is None):
            raise ValueError("valid_start and test_start must be given together")
        if self.valid_start and self.test_start and self.valid_start > self.test_start:
            raise ValueError("valid_start must not be after test_start")
        return self


class NegativesConfig(_Section):
    per_positive: int = Field(4, ge=0)
    strategies: list[NegativeStrategy] = Field(
        default_factory=lambda: [NegativeStrategy.UNIFORM, NegativeStrategy.POPULARITY]
    )
    popularity_alpha: float = Field(0.75, ge=0.0)
    # Popular items per category considered as cross-category hard negatives.
    hard_pool_size: int = Field(200, ge=1)
    # Draws per negative slot: a draw that hits one of the user's train positives is redrawn
    # up to attempts - 1 times; a slot whose draws all hit is left empty (counted in the summary).
    attempts: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _strategies_to_draw_from(self) -> "NegativesConfig":
        if self.per_positive > 0 and not self.strategies:
            raise ValueError(f"strategies is empty but per_positive is {self.per_positive}; give at least one of "
                             f"{[s.value for s in NegativeStrategy]} or set per_positive: 0")
        return self


class FeaturesConfig(_Section):
    # None: every event is a positive; else value >= this threshold.
    positive_min_value: float | None = None
    recency_half_life_days: float = Field(365.0, gt=0)
    # A training example's weight is its recency weight times n^-power, n = its user's train
    # positives in its category: 0 counts every event once (heavy users dominate the loss), 1
    # counts every (user, category) once, as the evaluation does.
    group_weight_power: float = Field(0.0, ge=0, le=1)
    history_length: int = Field(20, ge=1)
    # A training example's history: the user's train positives strictly before its event
    # ("event"), or before its UTC day ("day"). Served histories are days to weeks old when the
    # next item comes; "day" keeps the items of the same session (seconds apart in MovieLens,
    # ordered by the rating page) out of what the model learns to predict from. "profile": the
    # user's last history_length train positives at the end of train, minus the example's item.
    history_as_of: HistoryAsOf = HistoryAsOf.EVENT
    split: SplitConfig = SplitConfig()
    negatives: NegativesConfig = NegativesConfig()
    # Files of silver.training_examples: petastorm needs >= processes x a few row groups.
    training_files: int = Field(8, ge=1)
    seed: int = 42
