"""From YAML files and ``section.key=value`` overrides to a validated :class:`JobConfig`; the
errors name the key, the value and the keys allowed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from xrec_spark.config.base import ConfigError
from xrec_spark.config.job import JobConfig


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    # YAML scalars: 3 -> int, 0.5 -> float, true -> bool, [a, b] -> list, plain text -> str.
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from e
    return key.strip().split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = JobConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


# Keys that were renamed: the old name fails naming the new one.
RENAMED_KEYS: dict[str, str] = {
    "batch.target_categories": "batch.categories_for_all_users",
    "batch.block_size": "batch.users_per_block",
    "eval.block_size": "eval.users_per_block",
}


def with_renamed_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with every old key of :data:`RENAMED_KEYS` moved to its new name.

    For configs the project wrote itself (a run's stored spec): a run trained before a rename
    stays readable, and resumable. A user's file keeps failing on an old name instead.
    """
    out: dict[str, Any] = json.loads(json.dumps(dict(data), default=str))
    for old, new in RENAMED_KEYS.items():
        *parents, key = old.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node:
            # The same path walk as a --set override, so a rename of any depth is moved alike.
            _apply_override(out, new.split("."), node.pop(key))
    return out


def _format_errors(error: ValidationError, origin: str) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if err["type"] == "extra_forbidden" and key in RENAMED_KEYS:
            lines.append(f"{key}: renamed to {RENAMED_KEYS[key]}")
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            lines.append(f"{key}: unknown key{hint}")
        elif isinstance(err.get("input"), dict):
            # A check across a section's keys: the message names them; the section is too long to echo.
            lines.append(f"{key}: {err['msg']}")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid configuration from {origin}:\n  " + "\n  ".join(lines)


def build_config(data: Mapping[str, Any], overrides: Iterable[str] = (), origin: str = "<dict>") -> JobConfig:
    """Validate a plain mapping plus ``section.key=value`` overrides into a :class:`JobConfig`."""
    merged: dict[str, Any] = json.loads(json.dumps(dict(data), default=str))
    for item in overrides:
        path, value = _parse_override(item)
        _apply_override(merged, path, value)
    try:
        return JobConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from None


def read_yaml_file(file: Path, what: str, error: type[Exception]) -> Any:
    """The YAML document of ``file`` ({} when empty); ``error`` names ``what`` the file is when
    it is missing or not YAML."""
    if not file.is_file():
        raise error(f"{what} file not found: {file}")
    try:
        return yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{what} file {file} is not valid YAML: {e}") from e


def _read_yaml(file: Path) -> dict[str, Any]:
    data = read_yaml_file(file, "config", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file}: top level must be a mapping of sections")
    return data


def merge_sections(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` on ``base``: mappings merge key by key, any other value (lists too) replaces."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_sections(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | Sequence[str | Path] | None = None, overrides: Iterable[str] = ()) -> JobConfig:
    """Read a YAML config (None: all defaults), or several merged in order (each an overlay on
    the ones before, e.g. ``conf/local.yaml`` then a tuned ``best.yaml``), and apply overrides."""
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return build_config({}, overrides, origin="defaults")
    data: dict[str, Any] = {}
    for file in paths:
        data = merge_sections(data, _read_yaml(Path(file)))
    return build_config(data, overrides, origin=" + ".join(str(Path(p)) for p in paths))
