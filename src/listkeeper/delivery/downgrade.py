"""What a message needs of the server it goes to (RFC 6152 8BITMIME, RFC 6531 SMTPUTF8), and its
conversion to seven bits for a server without 8BITMIME.

Inbound mail may carry 8-bit bodies and, with SMTPUTF8, UTF-8 addresses and header fields. Each copy
is relayed as it is to servers that announce what it needs. To a server without 8BITMIME, 8-bit body
parts are re-encoded as quoted-printable (text) or base64 before the copy is signed, so its DKIM
signature covers what is sent. Without SMTPUTF8 a copy that needs it is refused before sending,
with status 5.6.7, and its sender gets a delivery report: header downgrading (RFC 6857) would change
addresses, which a list must not guess at.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import encoders
from email.message import Message
from email.parser import BytesParser
from email.policy import SMTP

@dataclass(frozen=True)
class Needs:
    eight_bit: bool  # a body with octets above 127: BODY=8BITMIME
    smtputf8: bool  # UTF-8 in an address or a header field


def needs(data: bytes, return_path: str, recipient: str) -> Needs:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head, body = (data, b"") if end < 0 else (data[:end], data[end:])
    return Needs(eight_bit=not body.isascii(),
                 smtputf8=not (return_path.isascii() and recipient.isascii() and head.isascii()))


def seven_bit(data: bytes) -> bytes:
    """`data` with every 8-bit body part re-encoded in seven bits; unchanged when it has none."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or data[end:].isascii():
        return data
    message = BytesParser(policy=SMTP).parsebytes(data)
    for part in message.walk():
        if part.is_multipart():
            continue
        if part.get_content_maintype() == "message":  # its parts are converted in turn
            _set_encoding(part, "7bit")
            continue
        if str(part.get("Content-Transfer-Encoding", "")).strip().lower() in ("quoted-printable", "base64"):
            continue
        raw = part.get_payload(decode=True) or b""
        if raw.isascii():
            _set_encoding(part, "7bit")
            continue
        if "Content-Type" not in part:  # 8-bit text without MIME: its charset is not known (RFC 1428)
            part["Content-Type"] = "text/plain; charset=unknown-8bit"
        del part["Content-Transfer-Encoding"]
        if part.get_content_maintype() == "text":  # line ends stay line ends, not =0D
            part.set_payload(raw.replace(b"\r\n", b"\n"))
            encoders.encode_quopri(part)
        else:
            part.set_payload(raw)
            encoders.encode_base64(part)
    for part in message.walk():  # containers of converted parts are seven-bit too
        if part.is_multipart() and str(part.get("Content-Transfer-Encoding", "")).strip().lower() in ("8bit", "binary"):
            _set_encoding(part, "7bit")
    if "MIME-Version" not in message:
        message["MIME-Version"] = "1.0"
    return message.as_bytes(policy=SMTP)


def _set_encoding(part: Message, value: str) -> None:
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", value)
