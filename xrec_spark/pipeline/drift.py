"""When the nightly retrains: the model's age and the share of events it has not seen.

New events are read from bronze.events' Change Data Feed, starting at the first commit after
the model finished training: the nightly reads only the rows added since (the inserts of those
commits), not the table. The events the model saw are counted at the version before that
commit (a count Delta answers from the log's file statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from xrec_spark.config import BatchConfig
from xrec_spark.tables import BRONZE_EVENTS, CATEGORY_INDEX, Lakehouse


def new_events_since(lake: Lakehouse, moment: datetime) -> tuple[int, int]:
    """(events inserted into bronze.events after ``moment``, events in it at ``moment``)."""
    if not lake.exists(BRONZE_EVENTS):
        return 0, 0
    start = lake.first_version_after(BRONZE_EVENTS, moment)
    if start is None:
        return 0, lake.read(BRONZE_EVENTS).count()
    new = lake.inserted_since(BRONZE_EVENTS, start).count()
    before = lake.read(BRONZE_EVENTS, version=start - 1).count() if start > 0 else 0
    return int(new), int(before)


def categories_added_since(lake: Lakehouse, model_inputs: dict[str, int]) -> list[str]:
    """Categories of silver.category_index added after the version the model was trained on."""
    trained_on = model_inputs.get(CATEGORY_INDEX.qualified)
    if trained_on is None or not lake.exists(CATEGORY_INDEX):
        return []
    known = lake.read(CATEGORY_INDEX, version=trained_on).select("category")
    rows = lake.read(CATEGORY_INDEX).select("category").join(known, "category", "left_anti").collect()
    return sorted(str(r["category"]) for r in rows)


def retrain_reason(model_finished: datetime, run_date: date, drift: float, batch: BatchConfig,
                   new_categories: Sequence[str] = ()) -> str | None:
    """Why to retrain for ``run_date`` ("new categories" / "schedule" / "drift"; every one that
    applies, joined by "; "), or None to reuse the model.

    New categories: the category index gained categories since the model was trained; the
    model has no parameters for them (no task head, no category embedding), so it cannot rank
    them until it is retrained, or adapted: with ``batch.few_shot`` the nightly gives a new
    category with few train events a head of its own instead (:mod:`xrec_spark.pipeline.few_shot`),
    unless the schedule or drift calls for a full retrain anyway, which the reason then names.

    Schedule: the run date is ``batch.retrain_every_days`` or more days after the day the model
    finished (0 turns the schedule off). Drift: new events / events the model saw
    >= ``batch.drift_threshold``.
    """
    reasons = []
    if new_categories:
        reasons.append(f"new categories: {', '.join(new_categories)} (the model has no parameters for them)")
    age_days = (run_date - model_finished.date()).days
    if batch.retrain_every_days and age_days >= batch.retrain_every_days:
        reasons.append(f"schedule: model is {age_days} days old (batch.retrain_every_days={batch.retrain_every_days})")
    if drift >= batch.drift_threshold:
        reasons.append(f"drift: {drift:.3f} new events per event seen (batch.drift_threshold={batch.drift_threshold})")
    return "; ".join(reasons) or None
