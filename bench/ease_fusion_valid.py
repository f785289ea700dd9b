"""Diagnostic: how much does EASE's item-item signal add to a trained model on valid?

    python bench/ease_fusion_valid.py <lakehouse>/checkpoints/<run> <lambda> <top_items> <beta> [<beta> ...]

Scores the run's best checkpoint on its validation groups (the training job's groups and
ranking) alone, EASE alone, and model + beta x EASE for each beta. EASE (Steck, WWW 2019) is
fitted here on the run's pinned train positives over the ``top_items`` most popular items:
B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1, score x_u . B[:, i] with x_u the user's whole
train profile (items outside the top get EASE score 0). A diagnostic of complementarity, not a
system of the suite: beta is swept on valid only.
"""
import sys
import numpy as np
import pyarrow.dataset as pads
import torch
from torch import nn
from xrec_spark.model.checkpoint import load_model
from xrec_spark.train.loader import read_pinned
from xrec_spark.train.pinned import load_content
from xrec_spark.train.spec import INTERACTIONS, TrainSpec
from xrec_spark.train.validation import group_ndcg, load_validation, slice_means

run, lam, top = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
spec = TrainSpec.read(f"{run}/spec.json")
cfg = spec.job_config()
vs = load_validation(spec, cfg)
model, _ = load_model(f"{run}/model.pt", load_content(spec, cfg))
model.eval()
inter = spec.inputs[INTERACTIONS]
tr = read_pinned(inter.files, inter.path, ["user_idx", "item_idx", "split", "label"], inter.partition_by,
                 pads.field("split") == "train").to_pandas()
tr = tr[tr["label"] > 0]
n_items = int(model.item_tower.content_rows)
n_users = int(max(tr["user_idx"].max(), vs.user_idx.max())) + 1
keep = tr["item_idx"].value_counts().index.to_numpy()[:top]          # the top-N train items
col = np.full(n_items, -1)
col[keep] = np.arange(keep.size)
tr = tr[col[tr["item_idx"].to_numpy()] >= 0]
N = keep.size
X = np.zeros((n_users, N), dtype=np.float32)
X[tr["user_idx"].to_numpy(), col[tr["item_idx"].to_numpy()]] = 1.0
G = X.T @ X
G[np.diag_indices(N)] += lam
P = np.linalg.inv(G)
B = -P / np.diag(P)[None, :]
B[np.diag_indices(N)] = 0.0
Bfull = np.zeros((N, n_items), dtype=np.float32)
Bfull[:, keep] = B                                                     # items outside the N: EASE score 0
Xt, Bt = torch.from_numpy(X), torch.from_numpy(Bfull)
print("EASE fitted", n_items, "items", flush=True)


class Fused(nn.Module):
    def __init__(self, beta, model_weight=1.0):
        super().__init__()
        self.beta, self.w = beta, model_weight

    def user_vectors(self, user_idx, history, category_idx):
        return torch.cat([self.w * model.user_vectors(user_idx, history, category_idx), self.beta * Xt[user_idx]], 1)

    def item_vectors(self, item_idx):
        return torch.cat([model.item_vectors(item_idx), Bt[:, item_idx].T], 1)


with torch.no_grad():
    for name, sysm in [("model", Fused(0.0)), ("ease", Fused(1.0, 0.0))] + [(f"model+{b}*ease", Fused(b)) for b in map(float, sys.argv[4:])]:
        values = group_ndcg(sysm, vs, cfg.train.eval_k, torch.device("cpu"))
        slices = " ".join(f"{k} {v:.4f}" for k, v in slice_means(values, vs).items())
        print(f"{name:16s} all {np.nanmean(values):.4f} {slices}", flush=True)
