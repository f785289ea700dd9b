"""Valid NDCG@10 per user slice of one trained run, whole and split into its parts.

    python bench/score_parts.py <lakehouse>/checkpoints/<run_id>

Scores the run's best checkpoint four ways on the run's own validation groups (the training
job's early-stopping groups and ranking): trained; the item bias b(i) alone (dot product
zeroed); the dot product <f_k(h_u), g(i)> alone (bias zeroed); and the untrained model of the
same config (with ``model.item_bias``: per-category popularity). It tells how much the
user-item part adds to the popularity prior.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import Tensor, nn

from xrec_spark.model.checkpoint import load_model
from xrec_spark.model.towers import CrossCategoryModel
from xrec_spark.train.spec import TrainSpec
from xrec_spark.train.pinned import load_content
from xrec_spark.train.validation import group_ndcg, load_validation, slice_means


class ScorePart(nn.Module):
    """A model scored with only the bias column (``part="bias"``) or only the dot product."""

    def __init__(self, model: CrossCategoryModel, part: str) -> None:
        super().__init__()
        self.model, self.part = model, part

    def user_vectors(self, user_idx: Tensor, history: Tensor, category_idx: Tensor) -> Tensor:
        u = self.model.user_vectors(user_idx, history, category_idx).clone()
        if self.part == "bias":
            u[:, :-1] = 0
        else:
            u[:, -1] = 0
        return u

    def item_vectors(self, item_idx: Tensor) -> Tensor:
        return self.model.item_vectors(item_idx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training run's checkpoint folder (spec.json, model.pt)")
    args = parser.parse_args()
    spec = TrainSpec.read(f"{args.run_dir}/spec.json")
    cfg = spec.job_config()
    vs = load_validation(spec, cfg)
    if vs is None:
        raise SystemExit(f"run {spec.run_id} has no validation inputs")
    content = load_content(spec, cfg)
    model, _ = load_model(f"{args.run_dir}/model.pt", content)
    if not model.cfg.item_bias:
        raise SystemExit("the model has no item bias (model.item_bias: false): nothing to split")
    untrained = CrossCategoryModel(model.cfg, model.sizes, content).eval()
    systems = {"trained": model, "bias_only": ScorePart(model, "bias"), "dot_only": ScorePart(model, "dot"),
               "untrained": untrained}
    for name, system in systems.items():
        values = group_ndcg(system, vs, cfg.train.eval_k, torch.device("cpu"))
        slices = " ".join(f"{k} {v:.4f}" for k, v in slice_means(values, vs).items())
        print(f"{name:10s} all {np.nanmean(values):.4f} {slices}", flush=True)


if __name__ == "__main__":
    main()
