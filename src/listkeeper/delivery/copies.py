"""What each recipient's copy is made from: the stored messages, their per-recipient makers (a one-click
unsubscribe link) and a list event's template mails, rendered in batches. The scheduler keeps them only
while deliveries of them are claimed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from listkeeper.store import Store
from listkeeper.store import queue as store_queue

log = logging.getLogger("listkeeper.delivery")

# (stored message, its list, snapshot) -> what each recipient's copy is made from (`.for_recipient`), or
# None to send it as stored: per-recipient headers such as a one-click unsubscribe link
Personalise = Callable[[bytes, "str | None", object], "object | None"]
# a stored message of kind 'template' (a list event's template mail) -> what renders its copies:
# `.for_batch(conn, [(delivery id, recipient)])` gives each delivery's bytes, or why it could not be made
Templates = Callable[[bytes], object]


@dataclass(frozen=True)
class Unrenderable:
    """A template message no copy can be made of (unreadable, or no renderer): each delivery fails."""

    reason: str
    batch = True

    def for_batch(self, conn, recipients: list[tuple[int, str]]) -> dict[int, str]:
        return {delivery_id: self.reason for delivery_id, _ in recipients}


@dataclass(frozen=True)
class NotYet:
    """Copies that could not be made for a passing reason (the store): those deliveries are retried."""

    reason: str
    what: str = "the template mail was not rendered"


class Makers:
    """Reads claimed messages and makes what renders their copies; never keeps them."""

    def __init__(self, store: Store, current, personalise: Personalise | None, templates: Templates | None):
        self._store = store
        self._current = current  # () -> Snapshot
        self._personalise = personalise
        self._templates = templates

    def render(self, batches: list[tuple[object, list[tuple[int, str]]]]) -> dict[int, bytes | str | NotYet]:
        """Each claimed delivery of a template message rendered, with one read of its recipients' data.
        A template's own error fails its copy (the maker says so); anything else here is retried."""
        copies: dict[int, bytes | str | NotYet] = {}
        for maker, recipients in batches:
            try:
                with self._store.engine.connect() as conn:
                    copies.update(maker.for_batch(conn, recipients))
            except Exception as exc:  # noqa: BLE001 - retried later, none is lost
                log.exception("rendering %d template deliveries failed; they are retried", len(recipients))
                later = NotYet(f"{type(exc).__name__}: {exc}")
                copies.update({delivery_id: later for delivery_id, _ in recipients})
        return copies

    def fetch(self, message_ids: set[int]) -> tuple[dict[int, bytes], dict[int, object]]:
        with self._store.engine.connect() as conn:
            return self.load(conn, message_ids)

    def load(self, conn, message_ids: set[int]) -> tuple[dict[int, bytes], dict[int, object]]:
        """Bodies, and for those that get per-recipient headers, their makers: once per message."""
        bodies = store_queue.message_data(conn, message_ids)
        if not bodies:
            return bodies, {}
        heads = store_queue.message_heads(conn, bodies)
        personal = {mid: self.template(mid, data) for mid, data in bodies.items() if heads[mid][1] == "template"}
        if self._personalise is None:
            return bodies, personal
        snapshot = self._current()
        for mid, data in bodies.items():
            if mid in personal:
                continue
            try:
                maker = self._personalise(data, heads[mid][0] or None, snapshot)
            except Exception:  # noqa: BLE001 - the message still goes out, as stored
                log.exception("per-recipient headers for message %d failed; sending it as stored", mid)
                maker = None
            if maker is not None:
                personal[mid] = maker
        return bodies, personal

    def template(self, mid: int, data: bytes) -> object:
        """What renders a template message's copies; never its stored form sent as a mail."""
        if self._templates is None:
            return Unrenderable("this scheduler renders no template mails")
        try:
            return self._templates(data)
        except Exception as exc:  # noqa: BLE001
            log.exception("template message %d cannot be read", mid)
            return Unrenderable(f"{type(exc).__name__}: {exc}")
