"""Items for bronze.items: from an item file, or derived from the events when there is none.

Transforms only. Rules (documented in the README, "Ingest and sources"):

- A list-valued category column (MovieLens ``genres``) gives category = its FIRST element, and
  the item text = title + source text + every element joined with spaces, so the content
  encoder sees all genres.
- Without an item file (Ciao), each item's category is the one it was rated under most often in
  bronze.events, ties going to the category with the latest event (then the smallest name);
  title and text stay null. The per-event category stays in bronze.events.category.
- An item row is rejected as "missing id", "malformed line", "value out of range" (price not a
  finite number >= 0, or an image vector with null/NaN entries) or "duplicate within batch"
  (the same item_id again in one run: the first in (file, position) order is kept).
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.config import ItemSource
from xrec_spark.ingest.readers import CORRUPT, ORDINAL, SOURCE_FILE
from xrec_spark.ingest.validate import (DUPLICATE, MALFORMED, MISSING_ID, VALUE_OUT_OF_RANGE,
                                        normalise_text, parse_number, rejected_text, source_row)

ITEM_FIELDS: tuple[str, ...] = ("item_id", "category", "title", "text", "brand", "price", "image_vector")
CONTENT_FIELDS: tuple[str, ...] = ITEM_FIELDS[1:]
DERIVED_SOURCE = "derived:bronze.events"


class ItemColumnTypeError(TypeError):
    """An item source column has a type the mapping cannot use (names the column)."""


def _vector(col: Column, dtype: T.DataType, name: str) -> tuple[Column, Column]:
    """(array<float> without nulls, is-bad flag) from a list-of-numbers column."""
    if not (isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType)):
        raise ItemColumnTypeError(
            f"item column {name!r} mapped to image_vector has type {dtype.simpleString()}; "
            "it must be a list of numbers (array<float/double>)")
    bad = F.exists(col, lambda x: x.isNull() | F.isnan(x.cast(T.DoubleType())))
    clean = F.transform(col, lambda x: F.coalesce(x.cast(T.FloatType()), F.lit(0.0).cast(T.FloatType())))
    return F.when(col.isNotNull() & ~bad, clean), F.coalesce(bad, F.lit(False))


def classify_items(raw: DataFrame, source: ItemSource) -> DataFrame:
    """Map a raw items DataFrame (from ``readers.read_source``) to bronze fields and reasons.

    Output columns: item_id, category, title, text, brand, price (double), image_vector
    (array<float>), source (file URI), raw (the row as text; null for accepted rows), reason
    (null = accepted), _ordinal.
    """
    cols = source.columns
    types = {f.name: f.dataType for f in raw.schema.fields}
    null_s = F.lit(None).cast(T.StringType())

    def src(name: str | None) -> Column:
        return F.col(f"`{name}`") if name else null_s

    title = normalise_text(src(cols.title))
    text = normalise_text(src(cols.text))
    category = normalise_text(src(cols.category))
    if cols.category and isinstance(types[cols.category], T.ArrayType):
        labels = F.filter(F.transform(src(cols.category), normalise_text), lambda x: x.isNotNull())
        category = F.get(labels, 0)
        text = normalise_text(F.concat_ws(" ", title, text, F.array_join(labels, " ")))
    price_present = normalise_text(src(cols.price)).isNotNull() if cols.price else F.lit(False)
    price = parse_number(src(cols.price), types[cols.price]) if cols.price else F.lit(None).cast("double")
    if cols.image_vector:
        vector, bad_vector = _vector(src(cols.image_vector), types[cols.image_vector], cols.image_vector)
    else:
        vector, bad_vector = F.lit(None).cast(T.ArrayType(T.FloatType(), False)), F.lit(False)
    df = raw.select(
        normalise_text(src(cols.item_id)).alias("item_id"),
        category.alias("category"),
        title.alias("title"),
        text.alias("text"),
        normalise_text(src(cols.brand)).alias("brand"),
        price.alias("price"),
        price_present.alias("_price_present"),
        vector.alias("image_vector"),
        bad_vector.alias("_bad_vector"),
        F.col(SOURCE_FILE).alias("source"),
        source_row(raw).alias("_row"),
        F.col(CORRUPT).alias("_corrupt"),
        F.col(ORDINAL),
    )
    bad_price = F.col("_price_present") & (F.col("price").isNull() | F.isnan("price") | (F.col("price") < 0)
                                           | (F.col("price") == float("inf")))
    reason = (F.when(F.col("_corrupt").isNotNull(), F.lit(MALFORMED))
              .when(F.col("item_id").isNull(), F.lit(MISSING_ID))
              .when(bad_price | F.col("_bad_vector"), F.lit(VALUE_OUT_OF_RANGE)))
    df = df.withColumn("reason", reason)
    valid_key = F.when(F.col("reason").isNull(), F.col("item_id"))
    first = Window.partitionBy(valid_key).orderBy("source", ORDINAL)
    df = df.withColumn("reason", F.when(valid_key.isNotNull() & (F.row_number().over(first) > 1),
                                        F.lit(DUPLICATE)).otherwise(F.col("reason")))
    df = df.withColumn("raw", rejected_text(F.col("reason"), F.col("_corrupt"), F.col("_row")))
    return df.select(*ITEM_FIELDS, "source", "raw", "reason", ORDINAL)


def derive_items(events: DataFrame) -> DataFrame:
    """One row per item of ``events`` (bronze.events columns item_id, category, event_ts).

    Output columns: item_id, category (most frequent; ties -> latest event, then smallest
    name; null when no event of the item has a category), title, text, brand, price,
    image_vector (all null), source (:data:`DERIVED_SOURCE`).
    """
    per_category = (events.where(F.col("category").isNotNull())
                    .groupBy("item_id", "category")
                    .agg(F.count(F.lit(1)).alias("n"), F.max("event_ts").alias("last_ts")))
    best = Window.partitionBy("item_id").orderBy(F.col("n").desc(), F.col("last_ts").desc(), F.col("category"))
    chosen = (per_category.withColumn("_rank", F.row_number().over(best))
              .where(F.col("_rank") == 1).select("item_id", "category"))
    null_s = F.lit(None).cast(T.StringType())
    return (events.select("item_id").distinct().join(chosen, "item_id", "left")
            .select("item_id", "category", null_s.alias("title"), null_s.alias("text"), null_s.alias("brand"),
                    F.lit(None).cast(T.DoubleType()).alias("price"),
                    F.lit(None).cast(T.ArrayType(T.FloatType(), False)).alias("image_vector"),
                    F.lit(DERIVED_SOURCE).alias("source")))


def content_hash() -> Column:
    """sha256 of an item's content fields (what decides whether a MERGE would change it)."""
    return F.sha2(F.to_json(F.struct(*[F.col(c) for c in CONTENT_FIELDS])), 256)


def changed_items(candidates: DataFrame, existing: DataFrame | None, updated_at: datetime) -> DataFrame:
    """Items of ``candidates`` that are new or whose content differs from ``existing``.

    Both take bronze.items' content columns; the result has bronze.items' columns, with
    ``updated_at`` set to this run's time (latest wins on MERGE). Re-ingesting unchanged items
    therefore writes nothing.
    """
    rows = candidates.select(*ITEM_FIELDS, "source", content_hash().alias("_hash"))
    if existing is not None:
        current = existing.select("item_id", content_hash().alias("_hash"))
        rows = rows.join(current, ["item_id", "_hash"], "left_anti")
    return rows.select(*ITEM_FIELDS, F.lit(updated_at).alias("updated_at"), "source")
