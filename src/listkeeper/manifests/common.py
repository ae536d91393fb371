"""Building blocks shared by every manifest kind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import re

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

API_VERSION = "listkeeper/v1"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"
ADDRESS_PATTERN = r"^[^@\s<>\"]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"
HOSTNAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"


class Strict(BaseModel):
    """Unknown fields are errors and values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _lower(value: str) -> str:
    return value.lower()


Address = Annotated[
    str,
    Field(pattern=ADDRESS_PATTERN, max_length=254, description="An email address, local@domain."),
    AfterValidator(_lower),
]
Hostname = Annotated[
    str, Field(pattern=HOSTNAME_PATTERN, max_length=253), AfterValidator(_lower)
]


PRUNE_ANNOTATION = "listkeeper/prune"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration_seconds(text: str) -> float:
    """'90s', '5m', '67m', '1.5h', '5d' or a number of seconds -> seconds (manifests and command options)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError("expected a duration such as 30s, 5m, 2h, 5d or a number of seconds")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _seconds(value: Any) -> Any:
    return duration_seconds(value) if isinstance(value, str) else value


Duration = Annotated[
    float,
    BeforeValidator(_seconds),
    Field(ge=0),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION.pattern}],
                    "description": "Seconds, or a duration such as 30s, 5m, 2h, 5d."}),
]


class Metadata(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(
        pattern=NAME_PATTERN,
        max_length=63,
        description="Unique per kind: lower-case letters, digits, '-' and '.'.",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="'listkeeper/prune: disabled' keeps the resource from ever being deleted by reconcile.",
    )
    renamed_from: str | None = Field(
        default=None, alias="renamedFrom", pattern=NAME_PATTERN,
        description="The resource's previous name: reconcile renames it and keeps its runtime data.",
    )

    @property
    def prune_disabled(self) -> bool:
        return self.annotations.get(PRUNE_ANNOTATION) == "disabled"


class SecretRef(Strict):
    """A secret read at run time from the environment or a file; never written inline."""

    env: str | None = Field(default=None, min_length=1, description="Environment variable name.")
    file: str | None = Field(default=None, min_length=1, description="Path of a file holding the secret.")

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, value: Any) -> Any:
        if isinstance(value, (str, int, float)):
            raise ValueError("inline secrets are not allowed; use {env: NAME} or {file: PATH}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def reveal(self) -> str:
        """The secret's value; callers must never log or print it."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        return Path(self.file).read_text(encoding="utf-8").rstrip("\r\n")

    def where(self) -> str:
        """Where the secret lives, for messages: never its value."""
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env}"

    def read(self, what: str) -> str:
        """The secret's value, or a ValueError naming `what` and where it failed (never the value)."""
        try:
            return self.reveal()
        except (OSError, LookupError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            if isinstance(exc, LookupError):
                reason = "it is not set"
            raise ValueError(f"cannot read {what} from {self.where()}: {reason}") from None


class Manifest(Strict):
    """The envelope every kind shares: apiVersion, kind, metadata, spec."""

    KIND: ClassVar[str] = ""

    api_version: Literal["listkeeper/v1"] = Field(alias="apiVersion")
    metadata: Metadata

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
