"""The cross-category two-tower model, in pure PyTorch (this package never imports pyspark).

Parts: ``content`` (item content inputs), ``encoders`` (content and history encoders),
``heads`` (shared bottom / MMoE and per-category heads), ``towers`` (item and user towers and
:class:`CrossCategoryModel`), ``losses``, ``transfer``, ``distill``, ``checkpoint``.
"""

from xrec_spark.model.checkpoint import CheckpointMismatchError, load_model, save_model
from xrec_spark.model.content import ItemContent, hash_text
from xrec_spark.model.losses import MultiTaskLoss
from xrec_spark.model.towers import CrossCategoryModel, ModelSizes

__all__ = ["CheckpointMismatchError", "CrossCategoryModel", "ItemContent", "ModelSizes", "MultiTaskLoss",
           "hash_text", "load_model", "save_model"]
