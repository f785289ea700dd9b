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
from urllib.parse import urlparse

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
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


def read_block(spark: SparkSession, uri: str, offset: int, n: int) -> bytes:
    """Up to ``n`` bytes of the file at ``uri`` from byte ``offset`` (Hadoop file system)."""
    fs, hpath = _hadoop_fs(spark, uri)
    stream = fs.open(hpath)
    try:
        if offset:
            stream.seek(offset)
        return bytes(stream.readNBytes(n))
    finally:
        stream.close()


def check_not_empty(files: list[SourceFile], key: str) -> None:
    """Raise :class:`SourceReadError` when every file of a source has 0 bytes."""
    if not any(f.size > 0 for f in files):
        names = ", ".join(f.uri for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise SourceReadError(f"{key}: input is empty (0 bytes): {names}")


def check_files(spark: SparkSession, files: list[SourceFile], fmt: FileFormat, encoding: str,
                key: str) -> None:
    """Fail early, naming the file, when the input is empty, not of ``fmt``, or not ``encoding``.

    Only the first :data:`CHECKED_FILES` non-empty files and their first :data:`SNIFF_BYTES` are
    looked at: enough to catch a wrong path or format without reading the data twice.
    """
    check_not_empty(files, key)
    non_empty = [f for f in files if f.size > 0]
    try:
        decoder_factory = codecs.getincrementaldecoder(encoding)
    except LookupError as e:
        raise SourceReadError(f"{key}: unknown text encoding {encoding!r}; use e.g. UTF-8 or ISO-8859-1") from e
    for f in non_empty[:CHECKED_FILES]:
        head = read_block(spark, f.uri, 0, SNIFF_BYTES)
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


def _jvm_chain(error: BaseException) -> list:  # -> [java.lang.Throwable], outermost first
    """The JVM exception behind a py4j or PySpark error and its causes (empty when none)."""
    # Py4JJavaError keeps it as java_exception; PySpark's converted errors as _origin.
    throwable = getattr(error, "java_exception", None)
    if throwable is None:
        throwable = getattr(error, "_origin", None)
    chain: list = []
    while throwable is not None and len(chain) < 32:  # bounded: cause chains can loop
        chain.append(throwable)
        throwable = throwable.getCause()
    return chain


def read_error_cause(error: BaseException) -> str:
    """The first line of the innermost JVM exception under ``error``: the cause itself, where the
    outer ones only say "An error occurred while calling o123.parquet" or "Job aborted due to
    stage failure". Falls back to ``str(error)`` when no JVM exception is attached."""
    for throwable in reversed(_jvm_chain(error)):
        text = str(throwable.toString()).strip()
        if text:
            return text.splitlines()[0][:800]
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:800]


def _error_text(error: BaseException) -> str:
    """Every message of the exception chain, for searching (file names, known causes)."""
    texts = [str(t.getMessage() or "") for t in _jvm_chain(error)]
    return "\n".join([str(error), *texts])


def failed_file(error: BaseException, files: list[SourceFile]) -> str | None:
    """The URI of the file of ``files`` that a read error names, if any does."""
    text = _error_text(error)
    # Messages write file:/x, file:///x or a bare path: match on the path part; the longest
    # match wins, so "a.csv.gz" is not reported as "a.csv".
    named = [f for f in files if urlparse(f.uri).path and urlparse(f.uri).path in text]
    return max(named, key=lambda f: len(f.uri)).uri if named else None


def _single_folder(spark: SparkSession, path: str) -> str | None:
    """URI of ``path`` when it names one folder (not a file or a glob of several)."""
    fs, hpath = _hadoop_fs(spark, path)
    statuses = fs.globStatus(hpath) or []
    return statuses[0].getPath().toString() if len(statuses) == 1 and statuses[0].isDirectory() else None


def read_listed(spark: SparkSession, path: str, files: list[SourceFile], fmt: FileFormat, csv: CsvOptions,
                key: str, required: list[str], subset: list[SourceFile] | None = None) -> DataFrame:
    """Read the listed files of one source lazily, after checking they can be read at all.

    ``files`` is the listing of ``path`` (from :func:`list_source_files`) and ``fmt`` its
    resolved format; ``subset`` (default: all of ``path``) the files to read, for a re-ingest
    that skips unchanged files. Returns the source columns + :data:`META_COLUMNS`; CSV columns
    are read as strings (validation parses them); Parquet and JSON keep their own types.
    """
    check_not_empty(files, key)
    check_files(spark, files if subset is None else subset, fmt,
                csv.encoding if fmt is FileFormat.CSV else "UTF-8", key)
    targets = [path] if subset is None else [f.uri for f in subset]
    # Read by file, a folder's partition columns (x=1/ sub-folders) come only with its basePath.
    base = None if subset is None else _single_folder(spark, path)
    try:
        df = _read(spark, targets, fmt, csv, base)
    except (PySparkException, Py4JJavaError) as e:
        cause = read_error_cause(e)
        hint = ""
        if "TIMESTAMP(NANOS" in _error_text(e):
            hint = ("; Spark cannot read nanosecond timestamps: write the file with microsecond ones "
                    "(e.g. pandas to_parquet(..., coerce_timestamps='us'))")
        where = failed_file(e, files) or path
        raise SourceReadError(f"{key}: cannot read {where!r} as {fmt.value}: {cause}{hint}") from e
    source_columns = [c for c in df.columns if c != CORRUPT]
    if not source_columns:
        raise SourceReadError(f"{key}: {path!r} has no columns as {fmt.value} (empty, or not "
                              f"{fmt.value}); check the file and the source's format")
    missing = [c for c in required if c not in source_columns]
    if missing:
        raise SourceReadError(
            f"{key}: {path!r} has no column(s) {', '.join(missing)} (found: {', '.join(source_columns)}); "
            f"fix the source's columns mapping, or its format/csv options (read as {fmt.value}, "
            f"delimiter {csv.delimiter!r}, header {csv.header})")
    return _with_meta(df)


def _read(spark: SparkSession, targets: list[str], fmt: FileFormat, csv: CsvOptions,
          base: str | None) -> DataFrame:
    """Spark's reader for ``fmt`` over ``targets`` (paths, folders or globs), partition columns
    taken relative to ``base`` when given."""
    def based(reader: DataFrameReader) -> DataFrameReader:
        return reader.option("basePath", base) if base else reader

    if fmt is FileFormat.CSV:
        header = based(_csv_reader(spark, csv)).csv(targets).schema
        schema = T.StructType([*header.fields, T.StructField(CORRUPT, T.StringType(), True)])
        return (based(_csv_reader(spark, csv)).schema(schema).option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT).csv(targets))
    if fmt is FileFormat.JSON:
        return (based(spark.read).option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
                .option("encoding", "UTF-8").json(targets))
    return based(spark.read).parquet(*targets)


def read_source(spark: SparkSession, path: str, fmt: FileFormat, csv: CsvOptions, key: str,
                required: list[str]) -> tuple[DataFrame, list[SourceFile], FileFormat]:
    """Read one configured source lazily, after checking it can be read at all.

    ``key`` is the config key of the source's path (for messages); ``required`` the source
    columns the config maps. Returns the DataFrame (source columns + :data:`META_COLUMNS`), the
    files it covers and the resolved format (see :func:`read_listed`).
    """
    files = list_source_files(spark, path, key)
    resolved = resolve_format(fmt, files, path, key)
    return read_listed(spark, path, files, resolved, csv, key, required), files, resolved
