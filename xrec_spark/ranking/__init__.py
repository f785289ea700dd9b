"""Ranking: the top-K of items for (user, category) rows, shared by candidate generation and evaluation.

One contract, whoever asks:

- candidates: every item of the row's category that has a vector (no sampled negatives);
- excluded: the row's user's excluded items (items already seen), looked up per category;
- score: the inner product of the user x category vector and the item vector (double);
- ties: equal scores go to the lower ``item_idx``, at every position including the K-th;
- out: user_idx, category_idx, rank (1..K), item_idx, score; a row gets fewer than K items only
  when its category has fewer left after exclusion.

Modules: :mod:`~xrec_spark.ranking.kernels` (faiss exact and IVF search of one category, numpy
and faiss only), :mod:`~xrec_spark.ranking.dense` (top-K of a dense score matrix, numpy only:
for systems that produce scores rather than vectors, and for brute-force references),
:mod:`~xrec_spark.ranking.spark` (``rank_by_vectors``, the one Spark entry) and
:mod:`~xrec_spark.ranking.popularity` (popularity as vectors, served and evaluated alike).

This package imports nothing from train, batch, eval or pipeline; they import it. Nothing is
imported here, so that numpy-only users (training's validation) do not pull in pyspark.
"""
