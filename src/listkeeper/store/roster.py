"""The roster file: a list's static subscribers as CSV, what `members export` writes and `members import` reads.

    address,name,roles,state
    ann@example.org,Ann Smith,moderator regular,active

Only `address` is required (`email` is accepted as its name); a file of bare addresses without a header
works too. Roles are separated by spaces (commas, semicolons or bars also do); an empty cell means
"keep what the store has" for an existing member and the default (no name, `regular`, `active`) for a new
one. Reading is pure and streaming: each data line becomes a Row or a Problem, with its line number."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import NamedTuple, TextIO

from listkeeper.manifests.lists import Role

COLUMNS = ("address", "name", "roles", "state")
ALIASES = {"email": "address", "e-mail": "address", "mail": "address"}
STATES = frozenset({"active", "unsubscribed", "disabled"})
MAX_NAME = 200

# the manifests' address pattern, minus control characters and bytes that were not UTF-8
_ADDRESS = re.compile(r'^[^@\s<>"\x00-\x1f\x7f\udc80-\udcff]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\Z')
_ROLE_SPLIT = re.compile(r"[\s,;|]+")
# control characters, and bytes that were not UTF-8 (kept as lone surrogates by surrogateescape)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\udc80-\udcff]")
_ROLES = frozenset(r.value for r in Role)


class RosterError(Exception):
    """The file cannot be read as a roster at all (nothing was imported); the message names the line."""


class Row(NamedTuple):
    line: int
    address: str  # lower case
    name: str | None  # None: keep the store's (a new member has none)
    roles: str | None  # sorted, comma-separated as in the store; None: keep (a new member is regular)
    state: str | None  # None: keep (a new member is active)


class Problem(NamedTuple):
    """A line that was not imported, and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class Note(NamedTuple):
    """Something the operator should know about a line that was read (nothing was refused)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@lru_cache(maxsize=256)
def parse_roles(cell: str) -> str | Problem:
    """'regular moderator' -> 'moderator,regular'; a Problem (line 0) when a role is unknown or deny is mixed."""
    names = {n.lower() for n in _ROLE_SPLIT.split(cell.strip()) if n}
    unknown = sorted(names - _ROLES)
    if unknown:
        return Problem(0, f"unknown role {unknown[0]!r} (roles: {', '.join(r.value for r in Role)}); row skipped")
    if "deny" in names and len(names) > 1:
        return Problem(0, "role deny cannot be combined with others; row skipped")
    return ",".join(sorted(names))


def _columns(first: list[str], line: int) -> tuple[list[str | None], bool]:
    """The column of each cell, and whether the first row is a header."""
    names = [c.replace("\ufeff", "").strip().lower() for c in first]  # a byte order mark read as text, too
    names = [ALIASES.get(n, n) for n in names]
    if any(n in COLUMNS for n in names):
        if "address" not in names:
            raise RosterError(f"line {line}: the header has no 'address' column (address,name,roles,state)")
        repeated = sorted({n for n in names if n in COLUMNS and names.count(n) > 1})
        if repeated:
            raise RosterError(f"line {line}: column {repeated[0]!r} appears twice in the header")
        return [n if n in COLUMNS else None for n in names], True
    if first and "@" in first[0]:
        return list(COLUMNS), False  # no header: address,name,roles,state in that order
    raise RosterError(f"line {line}: expected a header naming the columns, e.g. address,name,roles,state")


def read(stream: TextIO) -> Iterator[Row | Problem | Note]:
    """Each data line as a Row, or a Problem saying why the line is skipped. Raises RosterError when the
    header is unusable. Open the file with newline='' and errors='surrogateescape' (bad bytes become a
    Problem on their line rather than stopping the import)."""
    reader = csv.reader(stream)
    end = 0
    seen: dict[str, int] = {}
    columns: list[str | None] | None = None
    try:
        for cells in reader:
            line, end = end + 1, reader.line_num
            if columns is None:
                if not "".join(cells).strip():
                    continue
                columns, header = _columns(cells, line)
                at = {name: i for i, name in enumerate(columns) if name is not None}
                a, n, r, s = at["address"], at.get("name", -1), at.get("roles", -1), at.get("state", -1)
                width = len(columns)
                if header:
                    ignored = [c.strip() for c, name in zip(cells, columns) if name is None and c.strip()]
                    if ignored:
                        yield Note(line, f"column(s) {', '.join(ignored)} ignored (known: {', '.join(COLUMNS)})")
                    continue
            if len(cells) < width:
                cells.extend([""] * (width - len(cells)))
            if not cells[a] and not "".join(cells).strip():  # a blank line
                continue
            cells.append("")  # what index -1 (a column the file does not have) reads
            yield _row(line, cells, a, n, r, s, seen)
    except csv.Error as exc:
        raise RosterError(f"line {end + 1}: not readable as CSV: {exc}") from None


def _row(line: int, cells: list[str], a: int, n: int, r: int, s: int, seen: dict[str, int]) -> Row | Problem:
    """One data line (cells padded to the header, plus a last empty cell for the columns the file lacks)."""
    address = cells[a].strip().lower()
    if not address:
        return Problem(line, "no address; row skipped")
    if len(address) > 254 or not _ADDRESS.match(address):
        return Problem(line, f"{_shown(cells[a])} is not an email address; row skipped")
    name = cells[n].strip()
    if not name.isprintable() and _UNPRINTABLE.search(name):  # isprintable: the fast, usual answer
        return Problem(line, f"the name of {address} has control characters or is not UTF-8; row skipped")
    if len(name) > MAX_NAME:
        return Problem(line, f"the name of {address} is longer than {MAX_NAME} characters; row skipped")
    roles = cells[r]
    if roles:
        roles = parse_roles(roles)
        if type(roles) is Problem:
            return Problem(line, f"{address}: {roles.message}")
    state = cells[s]
    if state:
        state = state.strip().lower()
        if state not in STATES:
            return Problem(line, f"{address}: unknown state {_shown(state)} (active, unsubscribed or disabled); "
                                 "row skipped")
    first = seen.setdefault(address, line)
    if first != line:
        return Problem(line, f"{address} is already on line {first}; row skipped")
    return Row(line, address, name or None, roles or None, state or None)


def _shown(value: str) -> str:
    """A cell quoted for a message, cut short and with unprintable characters escaped."""
    value = value.strip()
    cut = value[:80] + ("…" if len(value) > 80 else "")
    return repr(cut.encode("utf-8", "backslashreplace").decode("utf-8"))


def write(rows: Iterable[tuple[str, str | None, str, str]], out: TextIO) -> int:
    """Write (address, name, roles as stored, state) rows with a header; returns how many rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for address, name, roles, state in rows:
        writer.writerow((address, name or "", roles.replace(",", " "), state))
        count += 1
    return count
