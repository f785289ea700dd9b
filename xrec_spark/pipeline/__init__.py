"""The top layer: the ordered stages of the suite and the chains that run them.

``stages`` (the registry: each stage's job call and the tables its job module declares),
``demo`` (every stage once, then the tables), ``nightly`` / ``drift`` (the restartable daily
chain and its retrain decision), ``quality`` (the quality benchmark's chain with its trained
baselines). ``python -m xrec_spark.pipeline --list`` prints the stages with their tables.

Nothing below this package imports it: ``features``, ``model``, ``ingest``, ``train``,
``batch`` and ``eval`` are the job layer the stages call.
"""
