"""Notification: system events matched by conditions run actions (SmarterTrack's event actions).

The catalogue of system events and their typed attributes lives here, so validation can tell an
operator that a condition names an attribute the event never has; notify/ builds events against it."""

from __future__ import annotations

import re
from datetime import time as clock_time
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ConfigDict, Field, field_validator

from .common import Address, Duration, Manifest, SecretRef, Strict

# event type -> attribute -> (type, required). Times are seconds since the epoch.
EVENT_TYPES: dict[str, dict[str, tuple[type, bool]]] = {
    "smtp.connection_failed": {  # an outgoing SMTP connection could not be opened or logged in
        "server": (str, True), "port": (int, True), "tls": (str, True), "auth": (bool, True),
        "error": (str, True), "stage": (str, True)},  # stage: dns | connect | tls | greeting | auth
    "delivery.failed": {  # a temporary failure: tried again at retry_at
        "address": (str, True), "sender": (str, True), "destination": (str, True), "error": (str, True),
        "attempts": (int, True), "message_id": (int, True), "retry_at": (float, True)},
    "delivery.final_failed": {  # permanent, or temporary past the lifetime (reason: permanent | expired)
        "address": (str, True), "sender": (str, True), "destination": (str, True), "error": (str, True),
        "attempts": (int, True), "message_id": (int, True), "reason": (str, True)},
    "auth.login_failed": {  # a failed SMTP AUTH on our listener
        "address": (str, True), "remote_ip": (str, True), "mechanism": (str, False)},
    "message.barred": {  # inbound mail refused at SMTP time (barring or list policy)
        "sender": (str, True), "address": (str, True), "recipients": (tuple, True), "remote_ip": (str, True),
        "rule": (str, True), "reason": (str, True)},
    "moderation.held": {
        "list": (str, True), "sender": (str, True), "subject": (str, True), "reason": (str, True),
        "message_id": (int, True)},
    "subscription.changed": {  # action: join | leave | digest_on | digest_off | disabled | enabled
        "list": (str, True), "address": (str, True), "action": (str, True), "source": (str, True)},
    "bounce.disabled": {
        "list": (str, True), "address": (str, True), "score": (float, True), "threshold": (float, True)},
    "event.fired": {  # a list event fired for some subscribers (source: tick | mail | cli)
        "list": (str, True), "event": (str, True), "subscribers": (int, True), "source": (str, True),
        "address": (str, False)},
    "config.rejected": {  # a reload refused: the manifests do not validate or cannot be applied
        "error": (str, True), "errors": (int, True), "source": (str, True)},
    "config.applied": {"generation": (int, True), "source": (str, True)},
}
# event attribute -> the Conditions field that matches it
CONDITION_FIELDS = {"server": "server", "address": "address", "sender": "sender", "port": "port", "tls": "tls",
                    "auth": "auth", "list": "lists"}
DELIVERY_TROUBLE = ("smtp.connection_failed", "delivery.failed", "delivery.final_failed")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
URL_PATTERN = r"^https?://[^\s/]+[^\s]*$"
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_sandbox = SandboxedEnvironment()

EventType = Annotated[str, Field(json_schema_extra={"enum": sorted(EVENT_TYPES)})]


def _template(value: str | None) -> str | None:
    if value is not None:
        try:
            _sandbox.parse(value)
        except TemplateSyntaxError as exc:
            raise ValueError(f"the template does not compile: {exc.message} (template line {exc.lineno})") from None
    return value


class TimeWindow(Strict):
    """Local time of day, from inclusive to exclusive; from after to crosses midnight (22:00 to 06:00)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    start: str = Field(alias="from", description="HH:MM, 24-hour clock.")
    end: str = Field(alias="to", description="HH:MM, 24-hour clock; 24:00 is not allowed, use 00:00.")

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day; expected HH:MM such as 08:00 or 17:30")
        return value

    def contains(self, moment: clock_time) -> bool:
        start, end = clock_time.fromisoformat(self.start), clock_time.fromisoformat(self.end)
        if start <= end:
            return start <= moment < end
        return moment >= start or moment < end


class Tls(str, Enum):
    none = "none"
    starttls = "starttls"
    implicit = "implicit"
    opportunistic = "opportunistic"


class Conditions(Strict):
    """All that are given must hold. Lists of values mean any of them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    time: TimeWindow | None = Field(default=None, description="Only within this time of day (in `timezone`).")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(
        default=None, min_length=1, description="Only on these days of the week (in `timezone`).")
    timezone: str = Field(default="UTC", description="IANA time zone of `time` and `days`, e.g. Europe/Berlin.")
    server: list[str] | None = Field(default=None, min_length=1,
                                     description="Server name globs, e.g. smtp.*.example.net (case-insensitive).")
    address: list[str] | None = Field(default=None, min_length=1,
                                      description="Address globs, e.g. *@example.org (case-insensitive).")
    sender: list[str] | None = Field(default=None, min_length=1, description="Sender address globs.")
    port: list[int] | None = Field(default=None, min_length=1)
    tls: list[Tls] | None = Field(default=None, min_length=1)
    auth: bool | None = Field(default=None, description="Whether the connection logged in (SMTP AUTH).")
    lists: list[str] | None = Field(default=None, min_length=1, alias="list",
                                    description="metadata.name of MailingLists.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; expected an IANA name such as UTC or Europe/Berlin") \
                from None
        return value

    def attributes(self) -> list[str]:
        """The event attributes these conditions look at."""
        return [name for name, field in CONDITION_FIELDS.items() if getattr(self, field) is not None]


class MaxFrequency(Strict):
    every: Duration = Field(gt=0, description="At most one run of the actions this often, e.g. 15m.")
    per: list[str] = Field(default_factory=list, description="Count separately per value of these event "
                           "attributes, e.g. [server]; by default once per rule.")


class WebhookAction(Strict):
    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=URL_PATTERN)] | SecretRef = Field(
        description="http(s) URL, or {env: NAME} / {file: PATH} when the URL itself holds a token. "
        "Logs show only its scheme, host and port.")
    secret: SecretRef | None = Field(default=None, description="Key of the HMAC-SHA256 signature sent in "
                                     "X-Listkeeper-Signature: sha256=HEX over the request body.")
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="Per attempt.")
    retries: int = Field(default=3, ge=0, le=10, description="Further attempts after a failed one (connection "
                         "error, timeout, 5xx or 429).")
    backoff: Duration = Field(default=2.0, ge=0, le=3600, description="Wait before the first retry; doubles.")

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        """One clear message instead of one per member of the union."""
        if isinstance(value, dict):
            return SecretRef.model_validate(value)
        if not isinstance(value, str) or not re.match(URL_PATTERN, value):
            raise ValueError("expected an http(s) URL such as https://hooks.example.org/listkeeper, or "
                             "{env: NAME} / {file: PATH} when the URL holds a token")
        return value


class LogAction(Strict):
    type: Literal["log"]
    path: str = Field(min_length=1, description="File that gets one JSON line per event.")


class EmailAction(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: Literal["email"]
    to: list[Address] = Field(min_length=1)
    sender: Address | None = Field(default=None, alias="from",
                                   description="Default: the postmaster of the first Domain.")
    subject: str = Field(default="[listkeeper] {{ event.type }}{% if count > 1 %} ({{ count }} times){% endif %}",
                         min_length=1, max_length=500)
    body: str | None = Field(default=None, description="Jinja2 (sandboxed): {{ event.type }}, {{ event.at }}, "
                             "{{ event.attributes }}, {{ count }}, {{ notification }}. Default: every attribute.")

    @field_validator("subject", "body")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return _template(value)


class ProviderAction(Strict):
    type: Literal["provider"]
    name: str = Field(min_length=1, description="An entry point in the group listkeeper.providers.")
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to the provider as given.")
    timeout: Duration = Field(default=30.0, gt=0, le=600)


Action = Annotated[Union[WebhookAction, LogAction, EmailAction, ProviderAction], Field(discriminator="type")]


class NotificationSpec(Strict):
    enabled: bool = True
    on: list[EventType] = Field(min_length=1, description="Event types: " + ", ".join(EVENT_TYPES) + ".")
    conditions: Conditions = Field(default_factory=Conditions)
    max_frequency: MaxFrequency | None = Field(
        default=None, description="Events inside the window run nothing; the next run carries their count.")
    actions: list[Action] = Field(min_length=1)

    @field_validator("on")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for item in value:
            if item not in EVENT_TYPES:
                raise ValueError(f"unknown event type {item!r}; expected one of {', '.join(EVENT_TYPES)}")
        return value


class Notification(Manifest):
    """When a system event matches, run actions: a web hook, a log line, an email, a provider."""

    KIND: ClassVar[str] = "Notification"
    kind: Literal["Notification"]
    spec: NotificationSpec

    def problems(self, index) -> list[tuple[tuple, str]]:
        spec, found = self.spec, []
        for name in spec.conditions.attributes():
            lacking = [t for t in spec.on if name not in EVENT_TYPES[t]]
            if lacking:
                found.append((("spec", "conditions", name), f"{', '.join(lacking)} has no attribute {name!r}; "
                              f"a condition on it could never hold"))
        for i, other in enumerate(spec.conditions.lists or ()):
            if other not in index.lists:
                found.append((("spec", "conditions", "list", i), f"no MailingList named {other!r}"))
        if spec.max_frequency is not None:
            for i, name in enumerate(spec.max_frequency.per):
                lacking = [t for t in spec.on if name not in EVENT_TYPES[t]]
                if lacking:
                    found.append((("spec", "max_frequency", "per", i),
                                  f"{', '.join(lacking)} has no attribute {name!r}"))
        trouble = sorted(set(spec.on) & set(DELIVERY_TROUBLE))
        for i, action in enumerate(spec.actions):
            if isinstance(action, EmailAction) and trouble and spec.max_frequency is None:
                found.append((("spec", "actions", i), f"an email action on {', '.join(trouble)} needs max_frequency: "
                              f"its own mail may meet the same trouble and notify again"))
        return found
