"""Errors that point at a place in a manifest file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Location:
    """A place in a file; line and column count from 1, as editors show them."""

    path: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class ManifestError:
    location: Location
    field: str
    message: str

    def __str__(self) -> str:
        field = self.field or "(document)"
        return f"{self.location}: {field}: {self.message}"


class ManifestErrors(Exception):
    """Raised when manifests cannot be loaded; carries every error found, sorted by place."""

    def __init__(self, errors: list[ManifestError]):
        self.errors = sorted(errors, key=lambda e: (e.location, e.field))
        super().__init__("\n".join(str(e) for e in self.errors))


def field_path(parts: tuple) -> str:
    """('spec', 'routes', 0, 'relay') -> 'spec.routes[0].relay'."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
