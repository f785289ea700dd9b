"""Valid NDCG@10 per user slice of trained runs and of their score average (seed ensembles).

    python bench/ensemble_valid.py <lakehouse>/checkpoints/<run_a> <run_b> [<run_c> ...]
    python bench/ensemble_valid.py <run> <run>:last       # best epoch + last epoch of one run

Each run's best checkpoint (``model.pt``; ``<run>:last`` takes the last epoch's weights from
``state.pt``) is scored on the first run's validation groups (the training job's early-stopping
groups and ranking), then the average of the first k runs' scores for k = 2..K. For two-tower
models the average of K scores b(i) + <u, v> is one dot product of the K user vectors
concatenated (each / K) with the K item vectors concatenated, which is how it is scored here.
"""
import sys
import numpy as np
import torch
from torch import Tensor, nn
from xrec_spark.model.checkpoint import load_model
from xrec_spark.train.spec import TrainSpec
from xrec_spark.train.pinned import load_content
from xrec_spark.train.validation import group_ndcg, load_validation, slice_means


class Ensemble(nn.Module):
    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def user_vectors(self, user_idx, history, category_idx):
        return torch.cat([m.user_vectors(user_idx, history, category_idx) for m in self.members], 1) / len(self.members)

    def item_vectors(self, item_idx):
        return torch.cat([m.item_vectors(item_idx) for m in self.members], 1)


runs = sys.argv[1:]
spec = TrainSpec.read(f"{runs[0].removesuffix(':last')}/spec.json")
cfg = spec.job_config()
vs = load_validation(spec, cfg)
models = []
for r in runs:
    last = r.endswith(":last")
    r = r.removesuffix(":last")
    s = TrainSpec.read(f"{r}/spec.json")
    m, _ = load_model(f"{r}/model.pt", load_content(s, s.job_config()))
    if last:
        m.load_state_dict(torch.load(f"{r}/state.pt", weights_only=False)["model"])
    models.append(m.eval())
systems = {f"run{i}": m for i, m in enumerate(models)}
for k in range(2, len(models) + 1):
    systems[f"ens{k}"] = Ensemble(models[:k])
with torch.no_grad():
    for name, system in systems.items():
        values = group_ndcg(system, vs, cfg.train.eval_k, torch.device("cpu"))
        slices = " ".join(f"{k} {v:.4f}" for k, v in slice_means(values, vs).items())
        print(f"{name:8s} all {np.nanmean(values):.4f} {slices}", flush=True)
