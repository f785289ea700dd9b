"""Batch side of the suite: embedding export, candidate generation, the nightly chain.

``pairs`` (which user x category pairs), ``export`` (model -> gold embeddings), ``generate``
(embeddings -> gold.candidates, ranked by :mod:`xrec_spark.ranking`, the engine evaluation uses
too), ``drift`` (the retrain decision), ``nightly`` (the restartable chain), ``showcase``.
"""
