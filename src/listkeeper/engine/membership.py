"""Which dynamic lists select a message's sender: the one lookup the posting rules cannot do."""

from __future__ import annotations

from datetime import datetime, timezone

from listkeeper.store import directory as member_directory

from .fanout import senders_of
from .headers import RawMessage
from .recipients import Recipient, Target
from .snapshot import Snapshot


def selected_lists(data: bytes, mail_from: str, recipients: list[Recipient], snapshot: Snapshot,
                   now: float) -> frozenset[str]:
    dynamic = [r.list for r in recipients if r.target is Target.post and r.list.spec.members is not None]
    if not dynamic:
        return frozenset()
    senders = senders_of(RawMessage.parse(data), mail_from)
    moment = datetime.fromtimestamp(now, timezone.utc)
    return frozenset(
        lst.name for lst in dynamic
        if member_directory.poster_addresses(snapshot.directories[lst.spec.members.directory],
                                             tuple(lst.spec.members.query), senders, moment)
    )
