"""A message's header block as raw lines, edited without re-encoding the body."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPLIT = re.compile(rb"\r?\n\r?\n")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
WIDTH = 78  # RFC 5322 2.1.1: lines SHOULD stay within 78 characters, MUST within 998


def field_line(name: str, value: str, eol: bytes) -> bytes:
    """`Name: value` and its line end, folded before white space so lines stay within 78 characters
    where the value allows (a single longer word stays whole)."""
    line = f"{name}: {_UNFOLD.sub('', value)}"  # folded anew, never folded twice
    if len(line) <= WIDTH:
        return line.encode("utf-8") + eol
    folded, current = [], ""
    for word in re.split(r"(?=[ \t])", line):
        if current and len(current) + len(word) > WIDTH and current.strip():
            folded.append(current)
            current = word
        else:
            current += word
    folded.append(current)
    return eol.join(part.encode("utf-8") for part in folded) + eol


@dataclass(frozen=True)
class RawMessage:
    """Header fields as (name, raw bytes incl. folding and line end) plus the untouched body."""

    fields: tuple[tuple[str, bytes], ...]
    separator: bytes  # the blank line between header and body
    body: bytes
    eol: bytes

    @classmethod
    def parse(cls, data: bytes) -> "RawMessage":
        match = _SPLIT.search(data)
        if match is None:
            head, separator, body = data, b"", b""
        else:
            gap = match.group(0)
            first_eol = b"\r\n" if gap.startswith(b"\r\n") else b"\n"
            head, separator, body = data[: match.start()] + first_eol, gap[len(first_eol):], data[match.end():]
        eol = b"\r\n" if b"\r\n" in (head + separator)[:2000] or not head else b"\n"
        fields: list[tuple[str, bytes]] = []
        for line in re.split(rb"(?<=\n)", head):
            if not line:
                continue
            if line[:1] in (b" ", b"\t") and fields:
                name, raw = fields[-1]
                fields[-1] = (name, raw + line)
            else:
                name = line.split(b":", 1)[0].decode("ascii", "replace").strip().lower()
                fields.append((name, line))
        if fields and not fields[-1][1].endswith(b"\n"):
            name, raw = fields[-1]
            fields[-1] = (name, raw + eol)
        if not separator:
            separator = eol
        return cls(tuple(fields), separator, body, eol)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        out = []
        for field_name, raw in self.fields:
            if field_name == name:
                value = raw.split(b":", 1)[1] if b":" in raw else b""
                out.append(re.sub(rb"\r?\n[ \t]", b" ", value).strip().decode("utf-8", "replace"))
        return out

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def without(self, *names: str) -> "RawMessage":
        drop = {n.lower() for n in names}
        return RawMessage(tuple(f for f in self.fields if f[0] not in drop), self.separator, self.body, self.eol)

    def with_field(self, name: str, value: str, first: bool = False) -> "RawMessage":
        line = field_line(name, value, self.eol)
        field = (name.lower(), line)
        fields = (field,) + self.fields if first else self.fields + (field,)
        return RawMessage(fields, self.separator, self.body, self.eol)

    def replace(self, name: str, value: str) -> "RawMessage":
        """Set a field in place of its first occurrence (or append it), dropping any others."""
        key = name.lower()
        line = field_line(name, value, self.eol)
        fields, done = [], False
        for f in self.fields:
            if f[0] == key:
                if not done:
                    fields.append((key, line))
                    done = True
                continue
            fields.append(f)
        if not done:
            fields.append((key, line))
        return RawMessage(tuple(fields), self.separator, self.body, self.eol)

    def to_bytes(self) -> bytes:
        return b"".join(raw for _, raw in self.fields) + self.separator + self.body
