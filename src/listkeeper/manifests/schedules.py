"""Checks shared by the kinds that run on a schedule (digests, reports): time zones and subject templates."""

from __future__ import annotations

import string
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}; expected an IANA name such as UTC or Europe/Berlin") \
            from None
    return value


def subject_template(value: str, fields: tuple[str, ...]) -> str:
    """A str.format template naming only `fields`."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise ValueError(f"the subject is not a valid template: {exc}") from None
    unknown = sorted({n for n in names if n not in fields})
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use " + ", ".join(f"{{{f}}}" for f in fields))
    return value
