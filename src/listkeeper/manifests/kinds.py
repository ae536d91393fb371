"""Every manifest kind, by name."""

from __future__ import annotations

from .accounts import SmtpAccount
from .barring import Barring
from .common import Manifest
from .directory import MemberDirectory
from .domains import Domain
from .lists import MailingList
from .notifications import Notification
from .reports import Report
from .routes import Relay, RoutingTable
from .suppression import SuppressionList

KINDS: dict[str, type[Manifest]] = {
    cls.KIND: cls for cls in (Barring, Domain, MailingList, MemberDirectory, RoutingTable, Relay, SuppressionList,
                              Notification, Report, SmtpAccount)
}
