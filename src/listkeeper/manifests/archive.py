"""A list's archive: every accepted post kept in a Maildir (the default) or an mbox file."""

from __future__ import annotations

import os
from enum import Enum

from pydantic import Field

from .common import Strict

ARCHIVE_ROOT = "var/archive"


class ArchiveFormat(str, Enum):
    maildir = "maildir"  # one file per post: each written whole, then linked in (safest)
    mbox = "mbox"  # one file, appended to


class Archive(Strict):
    enabled: bool = Field(default=True, description="false: posts are not archived.")
    format: ArchiveFormat = Field(default=ArchiveFormat.maildir, description="maildir | mbox")
    path: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="Relative to the working directory. Default: var/archive/LIST (maildir) or "
        "var/archive/LIST.mbox (mbox).")

    def location(self, list_name: str) -> str:
        if self.path:
            return os.path.normpath(self.path)
        suffix = ".mbox" if self.format is ArchiveFormat.mbox else ""
        return os.path.join(ARCHIVE_ROOT, list_name + suffix)
