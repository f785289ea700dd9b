"""The one boundary check of a DataFrame handed between modules: :func:`check_columns`.

It reads ``df.schema`` only (no Spark job), so transforms call it before building their plan and
fail with the caller's names instead of a Spark analysis error deep inside the plan.
"""

from __future__ import annotations

from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from xrec_spark.tables import SchemaMismatchError


def _is_integer(data_type: T.DataType) -> bool:
    return isinstance(data_type, (T.ShortType, T.IntegerType, T.LongType))


def _is_vector(data_type: T.DataType) -> bool:
    return isinstance(data_type, T.ArrayType) and isinstance(data_type.elementType, (T.FloatType, T.DoubleType))


def check_columns(df: DataFrame, where: str, required: Sequence[str] = (), *,
                  ints: Sequence[str] = (), vectors: Sequence[str] = ()) -> None:
    """Check that ``df`` has the columns a function needs, with usable types.

    ``required``: columns of any type; ``ints``: integer columns (smallint, int, bigint);
    ``vectors``: array<float> or array<double> columns. Raises
    :class:`~xrec_spark.tables.SchemaMismatchError` (a ValueError) naming every missing column,
    in the order asked, and what ``df`` has; TypeError naming every column of the wrong type.
    ``where`` starts both messages (e.g. ``"user vectors"``).
    """
    have = {f.name: f.dataType for f in df.schema.fields}
    wanted = list(dict.fromkeys([*required, *ints, *vectors]))
    missing = [c for c in wanted if c not in have]
    if missing:
        raise SchemaMismatchError(f"{where}: missing columns {', '.join(missing)} (has {', '.join(have)})")
    wrong = [f"{c} ({have[c].simpleString()}, expected an integer)" for c in ints if not _is_integer(have[c])]
    wrong += [f"{c} ({have[c].simpleString()}, expected array<float>)" for c in vectors if not _is_vector(have[c])]
    if wrong:
        raise TypeError(f"{where}: wrong column types: {', '.join(wrong)}")
