"""Batch side of the suite: embedding export, candidate generation, the nightly chain.

``search`` (numpy/faiss kernels, no Spark), ``candidates`` (the Spark top-K engine and the
popularity fallback), ``pairs`` (which user x category pairs), ``export`` (model -> gold
embeddings), ``generate`` (embeddings -> gold.candidates), ``lineage`` / ``drift`` (gold.runs,
meta.job_log markers, retrain decision), ``nightly`` (the restartable chain), ``showcase``.
"""
