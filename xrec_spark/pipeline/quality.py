"""The quality benchmark's chain: the registered stages on one data set, plus two trained
baselines, evaluated on test with every baseline (``bench/quality.py`` renders the results).

    ingest -> features -> train the model (the config's transfer phases) and its distilled student
           -> train no_sharing (model.share_across_categories=false) and shared_no_transfer
              (model.history_encoder=none), each as ONE joint phase with the model's total epochs,
              and the variant autoencoder_init (the model's config, model.init_from=autoencoder)
           -> evaluate on test (popularity, ALS, EASE and the DAE tuned on valid with the library's
              full search, the trained baselines, the student, the model) -> report

Every step is idempotent, and the trained model versions and the eval_id are kept in
``<root>/bench_versions.json``, so ``steps=("evaluate", "report")`` re-evaluates them later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from xrec_spark.config import TRAINED_BASELINES as TRAINED, Baseline, EvalConfig, JobConfig, load_config
from xrec_spark.pipeline.stages import Context, Summary, stage
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse

STEPS = ("ingest", "features", "train", "baselines", "evaluate", "report")
# Baselines trained by the training job, as config overrides of the model's config.
TRAINED_BASELINES: dict[str, list[str]] = {
    Baseline.NO_SHARING.value: ["model.share_across_categories=false"],
    # Without a history a user is their id row, whatever the model's own config says of ids.
    Baseline.SHARED_NO_TRANSFER.value: ["model.history_encoder=none", "model.user_ids=true"],
}
# Variants of the model: its own config plus these overrides (no single phase).
VARIANTS: dict[str, list[str]] = {Baseline.AUTOENCODER_INIT.value: ["model.init_from=autoencoder"]}
# The model trains with its distilled student, evaluated beside it as this system.
DISTILLED = Baseline.STUDENT.value
# Every other baseline: fitted by the evaluation itself.
EVAL_BASELINES = tuple(b.value for b in Baseline if b not in TRAINED)
# Keys whose EvalConfig defaults (the full ALS search, EASE's and the DAE's grids) the bench always uses.
FULL_SEARCH_KEYS = ("als_base_rank", "als_reg_params", "als_alphas", "als_ranks", "als_max_iter",
                    "ease_items", "ease_lambdas", "dae_items", "dae_hidden", "dae_epochs")


def single_phase(cfg: JobConfig) -> str:
    """One joint phase (finetune: every category, shared parts at full rate) with the epochs of
    all the config's phases together and its first phase's learning rate: the transfer schedule's
    budget without the transfer."""
    epochs = sum(p.epochs for p in cfg.train.phases)
    return f"train.phases=[{{name: finetune, epochs: {epochs}, lr: {cfg.train.phases[0].lr}, shared_lr_scale: 1.0}}]"


def full_search_overrides() -> list[str]:
    """``eval.<key>=<default>`` for the full ALS search and EASE grid (EvalConfig defaults)."""
    defaults = EvalConfig()
    return [f"eval.{key}={json.dumps(getattr(defaults, key))}" for key in FULL_SEARCH_KEYS]


@dataclass
class QualityRun:
    """One bench run: the data set's config file, its own lakehouse root and extra overrides."""

    config: str
    root: str
    overrides: list[str] = field(default_factory=list)
    emit: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def base(self) -> list[str]:
        return [f"lakehouse.root={self.root}", f"eval.report_dir={self.root}/report", *full_search_overrides(),
                *self.overrides]

    def config_with(self, *extra: str) -> JobConfig:
        return load_config(self.config, [*self.base, *extra])

    @property
    def versions_file(self) -> Path:
        return Path(self.root) / "bench_versions.json"

    def versions(self) -> dict[str, str]:
        """model_version of each trained system (and the eval_id), as the last run left them."""
        return json.loads(self.versions_file.read_text()) if self.versions_file.is_file() else {}

    def _keep(self, versions: dict[str, str]) -> None:
        self.versions_file.write_text(json.dumps(versions, indent=1, sort_keys=True))

    def _stage(self, name: str, ctx: Context, key: str | None = None, label: str | None = None) -> Summary:
        """Run stage ``name``, announced as ``label`` and timed under ``key`` (default: the name)."""
        label = label or name
        self.emit(f"\n=== {label}")
        summary = stage(name).run(ctx)
        self.emit(f"=== {label} done in {summary.seconds:.0f} s")
        self.emit("\n".join(summary.lines()))
        self.timings[key or name] = summary.seconds
        return summary

    def run(self, steps: tuple[str, ...] | list[str]) -> tuple[Lakehouse, dict[str, str]]:
        """Run ``steps`` (a subset of :data:`STEPS`, in that order); returns the lakehouse and
        the kept versions."""
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
        cfg = self.config_with()
        lake = Lakehouse(get_spark(cfg), cfg.lakehouse.root)
        Path(self.root).mkdir(parents=True, exist_ok=True)
        ctx = Context(lake, cfg, datetime.now(timezone.utc).date())
        versions = self.versions()
        for name in ("ingest", "features"):
            if name in steps:
                self._stage(name, ctx)
        trained: list[tuple[str, list[str]]] = [("model", ["model.distill=true"])] if "train" in steps else []
        if "baselines" in steps:
            trained += [(name, [*extra, single_phase(cfg)]) for name, extra in TRAINED_BASELINES.items()]
            trained += list(VARIANTS.items())
        # Every trained system's config is built before the first trains: a baseline whose
        # overrides clash with the model's config fails now, not after the model's training.
        configs = [(system, extra, self.config_with(*extra)) for system, extra in trained]
        for system, extra, system_cfg in configs:
            summary = self._stage("train", Context(lake, system_cfg, ctx.run_date),
                                  key=f"train {system}", label=f"train {system} {' '.join(extra)}")
            versions[system] = summary.result.result.model_version
            if summary.result.result.student is not None:
                versions[DISTILLED] = summary.result.result.student["model_version"]
            self._keep(versions)
        if "evaluate" in steps:
            evaluated = self._stage("evaluate", Context(lake, self._eval_config(versions), ctx.run_date))
            versions["eval_id"] = evaluated.result.eval_id
            self._keep(versions)
        if "report" in steps:
            chosen = [f"eval.eval_id={versions['eval_id']}"] if "eval_id" in versions else []
            self._stage("report", Context(lake, self.config_with(*chosen), ctx.run_date))
        return lake, versions

    def _eval_config(self, versions: dict[str, str]) -> JobConfig:
        missing = [s for s in ("model", *TRAINED_BASELINES) if s not in versions]
        if missing:
            raise ValueError(f"no trained version of {missing} in {self.versions_file}: run the train/baselines steps")
        trained = {k: versions[k] for k in (*TRAINED_BASELINES, *VARIANTS, DISTILLED) if k in versions}
        return self.config_with(
            "eval.split=test", "eval.include_model=true", f"eval.model_version={versions['model']}",
            f"eval.baselines={json.dumps([*EVAL_BASELINES, *trained])}",
            f"eval.baseline_versions={json.dumps(trained)}")
