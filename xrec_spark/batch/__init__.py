"""Batch side of the suite: embedding export and candidate generation.

``pairs`` (which user x category pairs), ``export`` (model -> gold embeddings), ``generate``
(embeddings -> gold.candidates, ranked by :mod:`xrec_spark.ranking`, the engine evaluation uses
too), ``showcase`` (a readable sample of the lists). The nightly chain that runs them is
:mod:`xrec_spark.pipeline.nightly`.
"""
