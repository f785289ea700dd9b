"""Raw files -> bronze tables: readers (CSV/Parquet/JSON), validation with quarantine reasons,
items (from a file or derived from events), the ingest run itself, and the synthetic source.

Entry points: :func:`xrec_spark.ingest.run.run_ingest` and
:func:`xrec_spark.ingest.synthetic.write_synthetic`.
"""
