"""What ``xrec ingest`` reads and how (``ingest``) and the synthetic source (``synthetic``)."""

from __future__ import annotations

from datetime import date
from enum import Enum

from pydantic import Field, model_validator

from xrec_spark.config.base import _Section


class FileFormat(str, Enum):
    AUTO = "auto"
    PARQUET = "parquet"
    CSV = "csv"
    JSON = "json"


class TimestampUnit(str, Enum):
    """How a numeric timestamp column is read; strings are parsed with ``ts_format`` or as ISO 8601."""

    SECONDS = "seconds"
    MILLIS = "millis"


class CsvOptions(_Section):
    delimiter: str = ","
    header: bool = True
    encoding: str = "UTF-8"


class EventColumns(_Section):
    """Source column for each bronze.events field (None: not in the source)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    event_ts: str = "event_ts"
    value: str | None = "rating"
    event_type: str | None = None
    category: str | None = None


class ItemColumns(_Section):
    """Source column for each bronze.items field (None: not in the source)."""

    item_id: str = "item_id"
    category: str | None = "category"
    title: str | None = "title"
    text: str | None = None
    brand: str | None = None
    price: str | None = None
    image_vector: str | None = None


class EventSource(_Section):
    path: str
    format: FileFormat = FileFormat.AUTO
    columns: EventColumns = EventColumns()
    csv: CsvOptions = CsvOptions()
    ts_format: str = "yyyy-MM-dd HH:mm:ss"
    ts_unit: TimestampUnit = TimestampUnit.SECONDS
    # event_type for every row when the source has no event_type column.
    default_event_type: str = "rating"


class ItemSource(_Section):
    path: str
    format: FileFormat = FileFormat.AUTO
    columns: ItemColumns = ItemColumns()
    csv: CsvOptions = CsvOptions()


class IngestConfig(_Section):
    events: EventSource | None = None
    # None: items (id, category) are derived from the events' category column.
    items: ItemSource | None = None
    event_types: list[str] = Field(default_factory=lambda: ["rating", "click", "view", "cart", "purchase"])
    value_min: float = 1.0
    value_max: float = 5.0
    min_ts: date = date(1990, 1, 1)
    # Rows dated after now + this many days are rejected as "future".
    future_tolerance_days: int = Field(1, ge=0)
    # Skip input files already ingested unchanged under the same rules (meta.ingested_files);
    # false reads every file again (the MERGEs still add nothing twice).
    skip_unchanged: bool = True

    @model_validator(mode="after")
    def _range_is_ordered(self) -> "IngestConfig":
        if self.value_min > self.value_max:
            raise ValueError(f"value_min ({self.value_min}) must be <= value_max ({self.value_max})")
        return self


class SyntheticConfig(_Section):
    """Synthetic events with planted cross-category taste (see ``ingest/synthetic.py``)."""

    users: int = Field(2_000, ge=1)
    items: int = Field(5_000, ge=1)
    categories: int = Field(8, ge=1)
    events: int = Field(100_000, ge=1)
    taste_clusters: int = Field(6, ge=1)
    popularity_skew: float = Field(1.1, ge=0.0)
    image_dim: int = Field(0, ge=0)
    start: date = date(2020, 1, 1)
    days: int = Field(365, ge=1)
    seed: int = 7
    files: int = Field(4, ge=1)
    # Share of events where a user picks from their own taste cluster's items (else any item
    # of the category): the strength of the planted cross-category signal.
    cluster_affinity: float = Field(0.8, ge=0.0, le=1.0)
    # From this day (0-based) on, a new category with new items and new users appears
    # (None: never); new_category_share of that period's events go to it.
    new_category_day: int | None = Field(None, ge=0)
    new_category_items: int = Field(200, ge=1)
    new_category_users: int = Field(100, ge=1)
    new_category_share: float = Field(0.2, ge=0.0, le=1.0)
    # From this day (0-based) on, new_items new items join the existing categories (same
    # category and cluster layout as the others) and take new_items_share of the events
    # (None: never): the cold start of items in categories the model already knows.
    new_items_day: int | None = Field(None, ge=0)
    new_items: int = Field(200, ge=1)
    new_items_share: float = Field(0.2, ge=0.0, le=1.0)
