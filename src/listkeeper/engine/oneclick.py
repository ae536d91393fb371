"""One-click unsubscribe (RFC 8058): signed per-recipient links, each recipient's own List-Unsubscribe
field, and leaving a list at once.

A token names a list and an address and carries an HMAC-SHA256 over both with the store's signing key
(store/signing.py), so it cannot be forged, nor moved to another address or list. Nothing is stored per
link: any node that shares the store honours it.

A list post is stored once (engine/fanout.py `list_copy`, with the mailto-only List-Unsubscribe). At
delivery the scheduler asks `Links.personal_copy` once per stored message; for a list copy that gives
the message split around that field, so each recipient costs one HMAC and one join, no parsing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from listkeeper import notify
from listkeeper.store import subscribers

from .fanout import unsubscribe_mailto
from .headers import RawMessage
from .snapshot import ListConfig, Snapshot

PURPOSE = b"listkeeper one-click unsubscribe v1\0"  # a key used for something else never yields these MACs
PATH = "/unsubscribe/"
MAX_TOKEN = 1024
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, PURPOSE + payload, hashlib.sha256).digest()


def sign(key: bytes, list_name: str, address: str) -> str:
    """The token for (list, address): the two in base64url, a dot, their HMAC-SHA256."""
    payload = f"{list_name}\n{address.lower()}".encode("utf-8")
    return f"{_b64(payload)}.{_b64(_mac(key, payload))}"


@dataclass(frozen=True)
class Unsubscriber:
    """Who a valid token names."""

    list_name: str
    address: str


def verify(key: bytes, token: str) -> Unsubscriber | None:
    """The list and address a token was signed for, or None for anything forged, altered or malformed."""
    if len(token) > MAX_TOKEN or not _TOKEN.match(token):
        return None
    payload_text, mac_text = token.split(".")
    try:
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except ValueError:
        return None
    if not hmac.compare_digest(mac, _mac(key, payload)):
        return None
    list_name, newline, address = payload.decode("utf-8", "replace").partition("\n")
    return Unsubscriber(list_name, address) if newline and address else None


@dataclass(frozen=True)
class PersonalCopy:
    """A stored list post split around its List-Unsubscribe field."""

    head: bytes  # the header fields before it
    prefix: bytes  # b"List-Unsubscribe: <https://host/unsubscribe/"
    suffix: bytes  # b">,<eol> <mailto:...><eol>List-Unsubscribe-Post: List-Unsubscribe=One-Click<eol>"
    tail: bytes  # the other header fields, the blank line, the body
    list_name: str
    key: bytes

    def for_recipient(self, address: str) -> bytes:
        token = sign(self.key, self.list_name, address).encode("ascii")
        return b"".join((self.head, self.prefix, token, self.suffix, self.tail))


@dataclass(frozen=True)
class Links:
    """What delivery needs to write one-click links: the signing key and where the listener is reached."""

    key: bytes
    default_base: str | None  # serve's --base-url, or its own listener's address

    def base_for(self, snapshot: Snapshot, lst: ListConfig) -> str | None:
        domain = snapshot.domains.get(lst.domain)
        return (domain.web_base_url if domain is not None and domain.web_base_url else self.default_base) or None

    def url(self, snapshot: Snapshot, lst: ListConfig, address: str) -> str | None:
        base = self.base_for(snapshot, lst)
        return f"{base}{PATH}{sign(self.key, lst.name, address)}" if base else None

    def personal_copy(self, data: bytes, list_name: str | None, snapshot: Snapshot) -> PersonalCopy | None:
        """For a list copy (a message of a list whose List-Unsubscribe is the one `list_copy` writes):
        the split each recipient's copy is made from. None for anything else: it goes out as stored."""
        if not list_name:
            return None
        lst = find_list(snapshot, list_name)
        base = self.base_for(snapshot, lst) if lst is not None else None
        if base is None:
            return None
        message = RawMessage.parse(data)
        mailto = unsubscribe_mailto(lst)
        at = [i for i, (name, _) in enumerate(message.fields) if name == "list-unsubscribe"]
        if len(at) != 1 or message.get("list-unsubscribe") != mailto:
            return None
        eol = message.eol
        head = b"".join(raw for _, raw in message.fields[:at[0]])
        rest = b"".join(raw for name, raw in message.fields[at[0] + 1:] if name != "list-unsubscribe-post")
        prefix = f"List-Unsubscribe: <{base}{PATH}".encode("utf-8")
        suffix = (b">," + eol + b" " + mailto.encode("utf-8") + eol
                  + b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" + eol)
        return PersonalCopy(head, prefix, suffix, rest + message.separator + message.body, list_name, self.key)


def find_list(snapshot: Snapshot, list_name: str) -> ListConfig | None:
    return next((item for item in snapshot.lists.values() if item.name == list_name), None)


def standing(conn: Connection, lst: ListConfig, address: str) -> str:
    """'member', 'unsubscribed' or 'not a member': what the confirmation page tells the visitor."""
    member = subscribers.get(conn, lst.name, address)
    if member is not None and member.state == "unsubscribed":
        return "unsubscribed"
    if lst.spec.members is not None or (member is not None and member.receives):
        return "member"  # a dynamic list's member is whoever its query selects and has not opted out
    return "not a member"


def leave(conn: Connection, lst: ListConfig, address: str, now: float) -> str:
    """Unsubscribe at once: 'unsubscribed', 'already unsubscribed' or 'not a member'.

    On a dynamic list the query may select the address again at every post, so the choice is kept
    as an opt-out row that the list's fan-out skips (engine/membership.py `receivers`)."""
    if lst.spec.members is not None:
        left = subscribers.opt_out(conn, lst.name, address, now, "web", "one-click")
    else:
        left = subscribers.unsubscribe(conn, lst.name, address, now, "web", "one-click")
    if left:
        notify.on_commit(conn, "subscription.changed", list=lst.name, address=address.lower(), action="leave",
                         source="web")
        return "unsubscribed"
    return "already unsubscribed" if standing(conn, lst, address) == "unsubscribed" else "not a member"
