"""The search space of ``xrec tune``: a YAML file of config keys and their ranges.

::

    study: ciao-local            # name in the study storage; rerunning continues this study
    seed: 7                      # TPE sampler seed
    startup_trials: 4            # TPE draws this many trials at random before modelling
    top: 5                       # rows of the best-trials table
    pruner: {kind: median, startup_trials: 2, warmup_epochs: 1}   # config.PrunerConfig
    space:
      train.phases.0.lr:   {type: float, low: 3.0e-4, high: 1.0e-2, log: true}
      train.phases.*.epochs: {type: int, low: 1, high: 3}          # `*`: every phase
      model.embedding_dim: {type: categorical, choices: [32, 64, 128]}

A key is a dotted path into the job config under ``model.``, ``train.`` or
``features.negatives.``; list items are addressed by index (``train.phases.0.lr``) or all at
once (``*``). Every key and every bound is checked against the typed config before any trial
runs: an unknown key fails naming it and the keys allowed where it went wrong. Keys that would
change the yardstick (the valid metric, its groups, the split) or where a run writes are refused.
"""

from __future__ import annotations

import copy
import json
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from xrec_spark.config import ConfigError, JobConfig, PrunerConfig, build_config, read_yaml_file

# Where a search key may point.
ALLOWED_PREFIXES: tuple[str, ...] = ("model.", "train.", "features.negatives.")
# Keys that set the yardstick or the run's plumbing, not the model: tuning them compares
# trials on different measures (or breaks them).
FORBIDDEN_KEYS: frozenset[str] = frozenset({
    "train.eval_k", "train.valid_max_groups", "train.target_categories", "train.trial", "train.tracking_uri",
    "train.checkpoint_dir", "train.num_processes", "train.local_mode", "train.use_gpu", "train.backend",
})


class SpaceError(ConfigError):
    """A search space file is invalid; the message names the key."""


class ParamKind(str, Enum):
    FLOAT = "float"
    INT = "int"
    CATEGORICAL = "categorical"


class ParamSpec(BaseModel):
    """One search dimension: a float/int range (optionally log-scaled, int with a step) or
    categorical choices (scalars)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = Field(None, ge=1)
    choices: list[Any] | None = None

    @field_validator("choices")
    @classmethod
    def _scalars(cls, v: list[Any] | None) -> list[Any] | None:
        if v is not None and (not v or any(isinstance(c, (list, dict)) for c in v)):
            raise ValueError(f"choices must be a non-empty list of scalars; got {v!r}")
        return v

    def check(self) -> None:
        """Bounds present and ordered for ranges, choices for categoricals (ValueError if not)."""
        if self.type is ParamKind.CATEGORICAL:
            if self.choices is None or self.low is not None or self.high is not None or self.log:
                raise ValueError("categorical takes choices only (no low/high/log)")
            return
        if self.choices is not None or self.low is None or self.high is None:
            raise ValueError(f"{self.type.value} takes low and high (no choices)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0; got {self.low}")
        if self.type is ParamKind.INT and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int bounds must be whole numbers; got {self.low}, {self.high}")
        if self.step is not None and (self.type is not ParamKind.INT or self.log):
            raise ValueError("step applies to linear int ranges only")

    def contains(self, value: Any) -> bool:
        """Whether a trial of this dimension could draw ``value``."""
        if self.type is ParamKind.CATEGORICAL:
            return value in (self.choices or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type is ParamKind.INT and (value != int(value) or (self.step and (value - self.low) % self.step)):
            return False
        return float(self.low or 0.0) <= float(value) <= float(self.high or 0.0)

    def probe_values(self) -> list[Any]:
        """The values that bound what a trial can draw (checked against the config up front)."""
        if self.type is ParamKind.CATEGORICAL:
            return list(self.choices or [])
        if self.type is ParamKind.INT:
            return [int(self.low or 0), int(self.high or 0)]
        return [float(self.low or 0.0), float(self.high or 0.0)]


class Suggester(Protocol):
    """What a search dimension needs from an Optuna trial (``optuna.trial.Trial`` has it)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any: ...


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, validated space file (see the module docstring)."""

    study: str
    params: dict[str, ParamSpec]
    pruner: PrunerConfig = PrunerConfig()
    seed: int = 0
    startup_trials: int = 4
    top: int = 5
    # Run the base config's own values as a trial (first, or next on a study without it), so the
    # best trial is never worse on valid than the config the search started from.
    base_trial: bool = True

    def base_values(self, base: JobConfig) -> tuple[dict[str, Any] | None, str]:
        """``(values, "")`` of every space key in ``base``, or ``(None, why)`` when one of them
        lies outside its range or choices (then no trial can reproduce the base)."""
        data = base.model_dump(mode="json")
        values: dict[str, Any] = {}
        for key, p in self.params.items():
            value = _get(data, key.split("."))
            if not p.contains(value):
                return None, f"{key}={value!r} is outside its search range"
            values[key] = int(value) if p.type is ParamKind.INT else value
        return values, ""

    def suggest(self, trial: Suggester) -> dict[str, Any]:
        """One value per key, drawn by ``trial`` (the Optuna param name is the key)."""
        out: dict[str, Any] = {}
        for key, p in self.params.items():
            if p.type is ParamKind.CATEGORICAL:
                out[key] = trial.suggest_categorical(key, list(p.choices or []))
            elif p.type is ParamKind.INT:
                out[key] = trial.suggest_int(key, int(p.low or 0), int(p.high or 0), step=p.step or 1, log=p.log)
            else:
                out[key] = trial.suggest_float(key, float(p.low or 0.0), float(p.high or 0.0), log=p.log)
        return out

    def features_keys(self) -> list[str]:
        return [k for k in self.params if k.startswith("features.")]


_TOP_LEVEL = ("study", "seed", "startup_trials", "top", "pruner", "base_trial", "space")


def parse_space(data: Mapping[str, Any], base: JobConfig, origin: str = "<space>") -> SearchSpace:
    """Validate a space mapping against ``base`` (the config the trials start from)."""
    if not isinstance(data, Mapping):
        raise SpaceError(f"{origin}: top level must be a mapping with a `space:` section")
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise SpaceError(f"{origin}: unknown top-level key(s) {unknown} (allowed: {', '.join(_TOP_LEVEL)})")
    raw = data.get("space")
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(f"{origin}: `space:` must map at least one config key to its range")
    study = data.get("study")
    if not isinstance(study, str) or not study.strip() or "/" in study:
        raise SpaceError(f"{origin}: study must be a non-empty name without '/'; got {study!r}")
    params: dict[str, ParamSpec] = {}
    for key, spec in raw.items():
        key = str(key)
        check_key(key, base)
        try:
            param = ParamSpec.model_validate(spec)
            param.check()
        except ValidationError as e:
            raise SpaceError(f"{origin}: space key {key}: {_errors(e)}") from None
        except ValueError as e:
            raise SpaceError(f"{origin}: space key {key}: {e}") from None
        for value in param.probe_values():
            try:
                apply_values(base, {key: value})
            except ConfigError as e:
                raise SpaceError(f"{origin}: space key {key}: value {value!r} is not valid for the config: "
                                 f"{e}") from None
        params[key] = param
    try:
        pruner = PrunerConfig.model_validate(data.get("pruner") or {})
        seed, startup, top = int(data.get("seed", 0)), int(data.get("startup_trials", 4)), int(data.get("top", 5))
    except ValidationError as e:
        raise SpaceError(f"{origin}: pruner: {_errors(e)}") from None
    except (ValueError, TypeError) as e:
        raise SpaceError(f"{origin}: seed, startup_trials and top must be integers: {e}") from None
    if startup < 0 or top < 1:
        raise SpaceError(f"{origin}: startup_trials must be >= 0 and top >= 1; got {startup}, {top}")
    base_trial = data.get("base_trial", True)
    if not isinstance(base_trial, bool):
        raise SpaceError(f"{origin}: base_trial must be true or false; got {base_trial!r}")
    return SearchSpace(study=study, params=params, pruner=pruner, seed=seed, startup_trials=startup, top=top,
                       base_trial=base_trial)


def _errors(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: "
                     f"{'unknown key' if e['type'] == 'extra_forbidden' else e['msg']} (got {e.get('input')!r})"
                     for e in error.errors())


def load_space(path: str | Path, base: JobConfig) -> SearchSpace:
    """Read and validate a space YAML file."""
    file = Path(path)
    data = read_yaml_file(file, "search space", SpaceError)
    return parse_space(data, base, origin=str(file))


# --------------------------------------------------------------------------- keys


def _section_type(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """``(pydantic model, is_list)`` when the annotation is a section or a list of sections."""
    candidates = [annotation, *typing.get_args(annotation)]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c, False
        if typing.get_origin(c) is list:
            inner = typing.get_args(c)
            if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
                return inner[0], True
    return None, False


def check_key(key: str, base: JobConfig) -> None:
    """Raise :class:`SpaceError` naming ``key`` unless it is a tunable leaf of the config."""
    if not key.startswith(ALLOWED_PREFIXES):
        raise SpaceError(f"space key {key}: only keys under {', '.join(p + '*' for p in ALLOWED_PREFIXES)} "
                         "can be tuned")
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        if ".".join(parts[:n]) in FORBIDDEN_KEYS:
            raise SpaceError(f"space key {key}: {'.'.join(parts[:n])} is not tunable (it sets the yardstick or "
                             "where runs go; tuning it would compare trials on different measures)")
    model: type[BaseModel] = JobConfig
    value: Any = base
    i = 0
    while i < len(parts):
        part = parts[i]
        fields = model.model_fields
        if part not in fields:
            raise SpaceError(f"space key {key}: unknown key {part!r} in {'.'.join(parts[:i]) or 'config'} "
                             f"(allowed: {', '.join(sorted(fields))})")
        value = getattr(value, part) if value is not None else None
        section, is_list = _section_type(fields[part].annotation)
        i += 1
        if section is None:
            if i != len(parts):
                raise SpaceError(f"space key {key}: {'.'.join(parts[:i])} is a value, not a section")
            return
        if is_list:
            if i == len(parts):
                raise SpaceError(f"space key {key}: {'.'.join(parts[:i])} is a list; name an item and a key, "
                                 f"e.g. {key}.0.<key> or {key}.*.<key>")
            index = parts[i]
            size = len(value or [])
            if index != "*" and not (index.isdigit() and int(index) < size):
                raise SpaceError(f"space key {key}: {'.'.join(parts[:i])} has {size} item(s) in the base config; "
                                 f"{index!r} is not an index 0..{size - 1} or '*'")
            value = (value or [None])[0] if index == "*" else value[int(index)]
            i += 1
        model = section
        if i == len(parts):
            raise SpaceError(f"space key {key}: {'.'.join(parts)} is a section; name one of its keys "
                             f"({', '.join(sorted(model.model_fields))})")


def _get(node: Any, parts: list[str]) -> Any:
    """The value at ``parts``; for ``*`` the items' common value, or their list when they differ."""
    for depth, part in enumerate(parts):
        if isinstance(node, list) and part == "*":
            values = [_get(item, parts[depth + 1:]) for item in node]
            return values[0] if values and all(v == values[0] for v in values) else values
        node = node[int(part)] if isinstance(node, list) else node.get(part)
        if node is None:
            return None
    return node


def _set(node: Any, parts: list[str], value: Any, key: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        targets = range(len(node)) if head == "*" else [int(head)]
        for t in targets:
            if rest:
                _set(node[t], rest, value, key)
            else:
                node[t] = value
        return
    if not isinstance(node, dict):
        raise SpaceError(f"space key {key}: cannot descend into {type(node).__name__}")
    if rest:
        if node.get(head) is None:
            node[head] = {}
        _set(node[head], rest, value, key)
    else:
        node[head] = value


def apply_values(base: JobConfig, values: Mapping[str, Any]) -> JobConfig:
    """``base`` with every ``key: value`` set (``*`` sets every list item); validated."""
    data = json.loads(json.dumps(base.model_dump(mode="json")))
    for key, value in values.items():
        _set(data, key.split("."), copy.deepcopy(value), key)
    return build_config(data, origin="search space values")


def overlay(cfg: JobConfig, keys: list[str]) -> dict[str, Any]:
    """The smallest config overlay that sets ``keys`` to their values in ``cfg``: each key's
    top list or value under its section (a list is written whole: config files replace lists).
    Feeding it as a second ``--config`` on the base reproduces ``cfg`` at those keys."""
    full = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in keys:
        parts = key.split(".")
        src, dst = full, out
        for depth, part in enumerate(parts):
            item = src[part]
            if isinstance(item, list) or depth == len(parts) - 1:
                dst[part] = copy.deepcopy(item)
                break
            src, dst = item, dst.setdefault(part, {})
    return out


def set_args(overlay_data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The overlay as ``--set key=value`` arguments (lists and values as YAML flow text)."""
    args: list[str] = []
    for k, v in overlay_data.items():
        if isinstance(v, Mapping):
            args += set_args(v, f"{prefix}{k}.")
        else:
            text = yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
            args.append(f"{prefix}{k}={text.removesuffix('...').strip()}")
    return args
