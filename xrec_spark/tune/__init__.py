"""Hyperparameter search over config keys with Optuna, on the valid split only (``xrec tune``).

``space`` parses the search space, ``study`` drives the stored study from the Spark driver,
``features`` gives trials that change ``features.*`` their own lakehouse prefix, and
``pruning`` is the part training rank 0 runs (no pyspark there).
"""
