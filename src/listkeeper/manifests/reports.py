"""Report: a table mailed on a schedule to operators, covering the time since its last run (Mailtraq)."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Literal

from croniter import croniter
from pydantic import ConfigDict, Field, field_validator

from .schedules import ALIASES, subject_template, time_zone
from .common import Address, Manifest, Strict

SUBJECT_FIELDS = ("report", "type", "since", "until", "rows")


class ReportType(str, Enum):
    delivery_failures = "delivery_failures"  # deliveries that failed or were deferred in the period
    subscriptions = "subscriptions"  # per list: joins, leaves and other changes
    barring = "barring"  # inbound mail refused at SMTP time
    events = "events"  # list event fires, per list and event
    queue = "queue"  # the delivery queue now, by state and destination


class ReportSpec(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: ReportType = Field(description="delivery_failures | subscriptions | barring | events | queue")
    schedule: str = Field(description="A cron expression in `timezone` (minute hour day month weekday, or "
                          "@daily, @weekly, ...): the report goes out at each such time.")
    timezone: str = Field(default="UTC", description="The time zone of the schedule, e.g. Europe/Berlin.")
    recipients: list[Address] = Field(min_length=1)
    sender: Address | None = Field(default=None, alias="from",
                                   description="Default: the postmaster of the first Domain.")
    lists: list[str] = Field(default_factory=list, description="Only these MailingLists (default: all).")
    subject: str = Field(default="listkeeper report {report}: {rows} row(s), {since} to {until}",
                         min_length=1, max_length=200,
                         description="Placeholders: " + ", ".join("{" + f + "}" for f in SUBJECT_FIELDS) + ".")
    max_rows: int = Field(default=500, ge=1, le=100_000,
                          description="Rows shown in the mail's text; the CSV attachment has every row.")
    enabled: bool = True

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = " ".join(value.split())
        if not ((len(value.split(" ")) == 5 or value.lower() in ALIASES) and croniter.is_valid(value)):
            raise ValueError(f"{value!r} is not a cron expression: expected five fields, minute hour day month "
                             f"weekday (e.g. '0 7 * * mon'), or one of {', '.join(ALIASES)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return time_zone(value)

    @field_validator("subject")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        return subject_template(value, SUBJECT_FIELDS)


class Report(Manifest):
    """A report mailed on a schedule: a plain-text table and the same rows as a CSV attachment."""

    KIND: ClassVar[str] = "Report"
    kind: Literal["Report"]
    spec: ReportSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        found = []
        for i, name in enumerate(self.spec.lists):
            if name not in index.lists:
                found.append((("spec", "lists", i), f"no MailingList named {name!r}"))
        if self.spec.lists and self.spec.type in (ReportType.barring, ReportType.queue):
            found.append((("spec", "lists"), f"a {self.spec.type.value} report is not per list; leave out lists"))
        return found
