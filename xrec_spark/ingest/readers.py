"""Raw input readers: CSV, Parquet and JSON lines, by file, folder or glob.

Every reader returns the source's own columns plus three bookkeeping columns that validation
needs (see :data:`META_COLUMNS`):

- ``_corrupt_record`` (string): the raw text of a line Spark could not parse (CSV rows with extra
  or missing fields, JSON lines that are not an object); null for good lines and for Parquet.
- ``_source_file`` (string): URI of the file the row came from.
- ``_ordinal`` (long): increasing with the row's position inside its file, so "the first of
  several duplicates" means the first in (file, position) order.

A source that cannot be read at all (no file matches, every file empty, a file of another format
or encoding, required columns absent) raises :class:`SourceReadError` naming the file and the
config key to fix, before anything is written anywhere.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.config import CsvOptions, FileFormat

CORRUPT = "_corrupt_record"
SOURCE_FILE = "_source_file"
ORDINAL = "_ordinal"
META_COLUMNS: tuple[str, ...] = (CORRUPT, SOURCE_FILE, ORDINAL)

# File name endings -> format, for format "auto".
EXTENSIONS: dict[str, FileFormat] = {
    ".csv": FileFormat.CSV, ".tsv": FileFormat.CSV, ".txt": FileFormat.CSV,
    ".parquet": FileFormat.PARQUET, ".pq": FileFormat.PARQUET,
    ".json": FileFormat.JSON, ".jsonl": FileFormat.JSON, ".ndjson": FileFormat.JSON,
}
# Files checked up front for their format signature and text encoding; Spark reads the rest and
# its errors are reported with the source path (see run.py).
CHECKED_FILES = 16
SNIFF_BYTES = 64 * 1024
PARQUET_MAGIC = b"PAR1"


class SourceReadError(ValueError):
    """A raw input cannot be read at all: missing, empty, wrong format or wrong encoding."""


@dataclass(frozen=True)
class SourceFile:
    """One input file as listed by the Hadoop file system (works for local paths and URIs)."""

    uri: str
    size: int
    modified_ms: int


def _hadoop_fs(spark: SparkSession, path: str):  # -> (org.apache.hadoop.fs.FileSystem, Path)
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def _is_hidden(relative: str) -> bool:
    # Spark's own rule: names starting with "_" or "." (e.g. _SUCCESS, _delta_log) are not data.
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def list_source_files(spark: SparkSession, path: str, key: str) -> list[SourceFile]:
    """Data files matched by ``path`` (a file, a folder read recursively, or a glob), sorted.

    Raises :class:`SourceReadError` naming ``key`` (the config key holding the path) when
    nothing matches.
    """
    fs, hpath = _hadoop_fs(spark, path)
    statuses = fs.globStatus(hpath) or []
    files: list[SourceFile] = []
    for status in statuses:
        if not status.isDirectory():
            files.append(SourceFile(status.getPath().toString(), int(status.getLen()),
                                    int(status.getModificationTime())))
            continue
        root = status.getPath().toString().rstrip("/")
        listing = fs.listFiles(status.getPath(), True)
        while listing.hasNext():
            entry = listing.next()
            uri = entry.getPath().toString()
            if not _is_hidden(uri[len(root):]):
                files.append(SourceFile(uri, int(entry.getLen()), int(entry.getModificationTime())))
    if not files:
        raise SourceReadError(
            f"{key}: no input file at {path!r} (missing file, empty folder, or a glob matching "
            "nothing); check the path (relative paths are resolved from the working directory)"
        )
    return sorted(files, key=lambda f: f.uri)


def resolve_format(fmt: FileFormat, files: list[SourceFile], path: str, key: str) -> FileFormat:
    """The configured format, or for ``auto`` the one every file's extension names."""
    if fmt is not FileFormat.AUTO:
        return fmt
    found = set()
    for f in files:
        name = f.uri.rsplit("/", 1)[-1].lower()
        ext = next((e for e in EXTENSIONS if name.endswith(e)), None)
        # Spark writes compressed part files such as part-0.snappy.parquet / part-0.json.gz.
        if ext is None and name.endswith((".gz", ".bz2", ".zst")):
            ext = next((e for e in EXTENSIONS if name.rsplit(".", 1)[0].endswith(e)), None)
        if ext is None:
            raise SourceReadError(
                f"{key}: cannot tell the format of {f.uri} from its name; set "
                f"{key.rsplit('.', 1)[0]}.format to csv, parquet or json")
        found.add(EXTENSIONS[ext])
    if len(found) > 1:
        raise SourceReadError(
            f"{key}: {path!r} mixes formats ({', '.join(sorted(x.value for x in found))}); point it "
            "at files of one format")
    return found.pop()


def _read_head(spark: SparkSession, uri: str, n: int) -> bytes:
    fs, hpath = _hadoop_fs(spark, uri)
    stream = fs.open(hpath)
    try:
        return bytes(stream.readNBytes(n))
    finally:
        stream.close()


def check_files(spark: SparkSession, files: list[SourceFile], fmt: FileFormat, encoding: str,
                key: str) -> None:
    """Fail early, naming the file, when the input is empty, not of ``fmt``, or not ``encoding``.

    Only the first :data:`CHECKED_FILES` non-empty files and their first :data:`SNIFF_BYTES` are
    looked at: enough to catch a wrong path or format without reading the data twice.
    """
    non_empty = [f for f in files if f.size > 0]
    if not non_empty:
        names = ", ".join(f.uri for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise SourceReadError(f"{key}: input is empty (0 bytes): {names}")
    try:
        decoder_factory = codecs.getincrementaldecoder(encoding)
    except LookupError as e:
        raise SourceReadError(f"{key}: unknown text encoding {encoding!r}; use e.g. UTF-8 or ISO-8859-1") from e
    for f in non_empty[:CHECKED_FILES]:
        head = _read_head(spark, f.uri, SNIFF_BYTES)
        if fmt is FileFormat.PARQUET:
            if not head.startswith(PARQUET_MAGIC):
                raise SourceReadError(
                    f"{key}: {f.uri} is not a Parquet file (it does not start with {PARQUET_MAGIC!r}); "
                    "set the source's format to csv or json, or point it at Parquet files")
            continue
        try:
            # final=False: the sniffed prefix may end inside a multi-byte character.
            text = decoder_factory(errors="strict").decode(head, final=False)
        except UnicodeDecodeError as e:
            raise SourceReadError(
                f"{key}: {f.uri} is not valid {encoding} text (byte {e.start}: {e.reason}); "
                f"set the source's csv.encoding to the file's encoding, or check its format "
                f"({fmt.value} expected)") from e
        if "\x00" in text:
            raise SourceReadError(
                f"{key}: {f.uri} contains NUL characters when read as {encoding} (UTF-16 or a "
                f"binary file?); set the source's csv.encoding or format ({fmt.value} expected)")


def _csv_reader(spark: SparkSession, csv: CsvOptions):
    return (spark.read.option("header", csv.header).option("sep", csv.delimiter)
            .option("encoding", csv.encoding).option("inferSchema", False))


def _with_meta(df: DataFrame) -> DataFrame:
    if CORRUPT not in df.columns:
        df = df.withColumn(CORRUPT, F.lit(None).cast(T.StringType()))
    ordinal: Column = F.monotonically_increasing_id()
    return df.withColumn(SOURCE_FILE, F.col("_metadata.file_path")).withColumn(ORDINAL, ordinal)


def read_source(spark: SparkSession, path: str, fmt: FileFormat, csv: CsvOptions, key: str,
                required: list[str]) -> tuple[DataFrame, list[SourceFile], FileFormat]:
    """Read one configured source lazily, after checking it can be read at all.

    ``key`` is the config key of the source's path (for messages); ``required`` the source
    columns the config maps. Returns the DataFrame (source columns + :data:`META_COLUMNS`), the
    files it covers and the resolved format. CSV columns are read as strings (validation parses
    them); Parquet and JSON keep their own types.
    """
    files = list_source_files(spark, path, key)
    resolved = resolve_format(fmt, files, path, key)
    check_files(spark, files, resolved, csv.encoding if resolved is FileFormat.CSV else "UTF-8", key)
    try:
        if resolved is FileFormat.CSV:
            header = _csv_reader(spark, csv).csv(path).schema
            schema = T.StructType([*header.fields, T.StructField(CORRUPT, T.StringType(), True)])
            df = (_csv_reader(spark, csv).schema(schema).option("mode", "PERMISSIVE")
                  .option("columnNameOfCorruptRecord", CORRUPT).csv(path))
        elif resolved is FileFormat.JSON:
            df = (spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
                  .option("encoding", "UTF-8").json(path))
        else:
            df = spark.read.parquet(path)
    except (PySparkException, Py4JJavaError) as e:
        first_line = str(e).strip().splitlines()[0][:500]
        hint = ""
        if "TIMESTAMP(NANOS" in first_line:
            hint = ("; Spark cannot read nanosecond timestamps: write the file with microsecond ones "
                    "(e.g. pandas to_parquet(..., coerce_timestamps='us'))")
        raise SourceReadError(f"{key}: cannot read {path!r} as {resolved.value}: {first_line}{hint}") from e
    source_columns = [c for c in df.columns if c != CORRUPT]
    if not source_columns:
        raise SourceReadError(f"{key}: {path!r} has no columns as {resolved.value} (empty, or not "
                              f"{resolved.value}); check the file and the source's format")
    missing = [c for c in required if c not in source_columns]
    if missing:
        raise SourceReadError(
            f"{key}: {path!r} has no column(s) {', '.join(missing)} (found: {', '.join(source_columns)}); "
            f"fix the source's columns mapping, or its format/csv options (read as {resolved.value}, "
            f"delimiter {csv.delimiter!r}, header {csv.header})")
    return _with_meta(df), files, resolved
