"""A list's digest settings: when digest members get the pending posts as one MIME digest."""

from __future__ import annotations

from enum import Enum
from functools import lru_cache

from croniter import croniter
from pydantic import Field, field_validator

from .schedules import ALIASES, subject_template, time_zone
from .common import Strict

SUBJECT_FIELDS = ("list", "volume", "issue", "date")
NEVER = "never"


class NewVolume(str, Enum):
    """When the volume number goes up (and the issue number starts again at 1), as in Mailman."""

    yearly = "yearly"
    monthly = "monthly"
    weekly = "weekly"
    never = "never"


class Digest(Strict):
    schedule: str = Field(
        default="0 7 * * *", description="A cron expression (minute hour day month weekday, or @daily, "
        "@weekly, ...) in `timezone`: pending posts go out at the next such time. 'never': only by size or by hand.")
    timezone: str = Field(default="UTC", description="The time zone of the schedule, e.g. Europe/Berlin.")
    max_size: int = Field(
        default=100_000, ge=1024, le=50 * 1024 * 1024,
        description="Bytes. A digest goes out as soon as the pending posts reach this size; each digest holds "
        "posts up to this size (always at least one), so more pending posts make several issues.")
    subject: str = Field(
        default="{list} digest, Vol {volume}, Issue {issue}", min_length=1, max_length=200,
        description="Placeholders: {list} (the list's name), {volume}, {issue}, {date} (YYYY-MM-DD).")
    new_volume: NewVolume = Field(default=NewVolume.monthly, description="yearly | monthly | weekly | never")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = " ".join(value.split())
        if value == NEVER:
            return value
        fields = value.split(" ")
        if not ((len(fields) == 5 or value.lower() in ALIASES) and _valid_cron(value)):
            raise ValueError(f"{value!r} is not a cron expression: expected five fields, minute hour day month "
                             f"weekday (e.g. '0 7 * * *' or '30 6 * * mon-fri'), one of {', '.join(ALIASES)}, or never")
        return value

    @property
    def scheduled(self) -> bool:
        return self.schedule != NEVER

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return time_zone(value)

    @field_validator("subject")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        return subject_template(value, SUBJECT_FIELDS)


@lru_cache(maxsize=1024)
def _valid_cron(value: str) -> bool:
    """croniter expands the expression to check it (a tenth of a millisecond); a thousand lists
    mostly share a few schedules, and a reload validates every one of them."""
    return croniter.is_valid(value)
