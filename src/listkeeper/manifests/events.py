"""List events (Mailtraq): per-subscriber counters, dependencies, repeats, template mails."""

from __future__ import annotations

from typing import Literal

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import Field, model_validator

from .common import Duration, Strict

BUILT_IN = ("join", "post")
EVENT_NAME = r"^[a-z][a-z0-9_-]{0,62}$"


class Dependency(Strict):
    """Another event of the list must have fired: at least / at most / exactly N times, or never."""

    event: str = Field(pattern=EVENT_NAME)
    at_least: int | None = Field(default=None, ge=0)
    at_most: int | None = Field(default=None, ge=0)
    exactly: int | None = Field(default=None, ge=0)
    never: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> "Dependency":
        counts = [self.at_least, self.at_most, self.exactly]
        if not self.never and all(c is None for c in counts):
            raise ValueError("give at_least, at_most, exactly or never")
        if self.never and any(c is not None for c in counts):
            raise ValueError("never cannot be combined with a count")
        if self.exactly is not None and (self.at_least is not None or self.at_most is not None):
            raise ValueError("exactly cannot be combined with at_least or at_most")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"at_least {self.at_least} and at_most {self.at_most} can never both hold")
        return self


class EventTemplate(Strict):
    subject: str = Field(min_length=1)
    body: str = Field(min_length=1, description="Jinja2 (sandboxed): {{ subscriber }}, {{ list }}, {{ counters }}.")

    @model_validator(mode="after")
    def _compiles(self) -> "EventTemplate":
        env = SandboxedEnvironment()
        for part in (self.subject, self.body):
            try:
                env.parse(part)
            except TemplateSyntaxError as exc:
                raise ValueError(f"the template does not compile: {exc.message} (template line {exc.lineno})") \
                    from None
        return self


class EventSpec(Strict):
    name: str = Field(pattern=EVENT_NAME)
    repeat: Duration | None = Field(default=None, description="Keep firing this often while the dependencies hold.")
    depends: list[Dependency] = Field(default_factory=list)
    match: Literal["all", "any"] = "all"
    template: EventTemplate | None = None


def event_problems(events: list[EventSpec]) -> list[tuple[tuple, str]]:
    found: list[tuple[tuple, str]] = []
    names: dict[str, int] = {}
    for i, event in enumerate(events):
        if event.name in BUILT_IN:
            found.append((("spec", "events", i, "name"), f"{event.name} is a built-in event"))
        elif event.name in names:
            found.append((("spec", "events", i, "name"), f"event {event.name} is defined twice"))
        names.setdefault(event.name, i)
    known = set(names) | set(BUILT_IN)
    for i, event in enumerate(events):
        for j, dep in enumerate(event.depends):
            if dep.event not in known:
                found.append((("spec", "events", i, "depends", j, "event"), f"no event named {dep.event!r}"))
    cycle = find_cycle(events)
    if cycle:
        found.append((("spec", "events", names[cycle[0]], "depends"),
                      f"dependencies form a cycle: {' -> '.join(cycle + [cycle[0]])}"))
    return found


def find_cycle(events: list[EventSpec]) -> list[str] | None:
    graph = {e.name: [d.event for d in e.depends if d.event not in BUILT_IN] for e in events}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] if nxt in path else [nxt]
            if nxt in graph and state.get(nxt) is None:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for name in graph:
        if state.get(name) is None:
            found = visit(name, [name])
            if found:
                return found
    return None


def in_dependency_order(events: list[EventSpec]) -> list[EventSpec]:
    """Each event after those it depends on, so one tick sees the counts of the same tick."""
    by_name = {e.name: e for e in events}
    done: list[EventSpec] = []
    seen: set[str] = set()

    def add(event: EventSpec) -> None:
        if event.name in seen:
            return
        seen.add(event.name)
        for dep in event.depends:
            if dep.event in by_name:
                add(by_name[dep.event])
        done.append(event)

    for event in events:
        add(event)
    return done
