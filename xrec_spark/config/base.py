"""The shared base of every config section and the error a bad config raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


# Closed choices whose values leave the config as text (phase names in the trainer's records
# and log lines, the process-group backend, split and system names in tables) are StrEnums:
# their str() and f-string form is the value ("freeze", not "TransferPhase.FREEZE"). The
# (str, Enum) ones are read through ``.value`` where they leave the config.
