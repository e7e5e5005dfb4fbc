"""SMTP replies as values: a code, an enhanced status code (RFC 3463) and text.

Every decision arproxy makes ends in one of these, so the server never has to guess
what to send, and a downstream's reply can be handed on exactly as it was given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
# Characters a reply line must never carry: they would end the line early or
# let downstream text smuggle an extra reply line to our client.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply; `lines` holds the text of each line, without code."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    @classmethod
    def of(cls, code: int, enhanced: str | None, *lines: str) -> Reply:
        return cls(code, enhanced, tuple(_clean(line) for line in lines) or ("",))

    @classmethod
    def from_downstream(cls, code: int, message: str) -> Reply:
        """Rebuild a reply from aiosmtplib's (code, "\\n"-joined message) form.

        The enhanced code is taken from the first line and stripped from every
        line, as RFC 3463 repeats it on each line of a multi-line reply.
        """
        raw_lines = message.split("\n") if message else [""]
        enhanced: str | None = None
        lines: list[str] = []
        for raw in raw_lines:
            match = _ENHANCED.match(raw)
            if match:
                enhanced = enhanced or raw[: match.end()].strip()
            lines.append(_clean(raw[match.end() :] if match else raw))
        if enhanced is not None and not enhanced.startswith(str(code)[0]):
            enhanced = None  # a class mismatch (e.g. "250 5.0.0") is not to be trusted
        return cls(code, enhanced, tuple(lines))

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def text(self) -> str:
        """The reply text on one line, for logs."""
        return " ".join(line for line in self.lines if line)

    def __str__(self) -> str:
        """Wire form without the final CRLF (aiosmtpd's push() adds it)."""
        prefix = f"{self.enhanced} " if self.enhanced else ""
        last = len(self.lines) - 1
        return "\r\n".join(
            f"{self.code}{' ' if i == last else '-'}{prefix}{line}".rstrip()
            for i, line in enumerate(self.lines)
        )


def _clean(text: str) -> str:
    return _UNSAFE.sub(" ", text).strip()


# The replies arproxy itself gives, in one place so their codes stay consistent.
OK = Reply.of(250, "2.0.0", "OK")
SENDER_OK = Reply.of(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply.of(250, "2.1.5", "Recipient OK")
RELAY_DENIED = Reply.of(550, "5.7.1", "Relaying denied: recipient domain is not local")
# RFC 5321 section 3.6.1 and appendix C: source routes in a local part are refused.
ROUTING_DENIED = Reply.of(
    550, "5.7.1", "Relaying denied: %, ! or @ in the local part of a local address"
)
DOWNSTREAM_UNAVAILABLE = Reply.of(451, "4.4.1", "Downstream server unavailable, try again later")
DOWNSTREAM_TIMEOUT = Reply.of(
    451, "4.4.1", "Downstream server did not answer in time, try again later"
)
LOCAL_ERROR = Reply.of(451, "4.3.0", "Local error in processing, try again later")
SHUTTING_DOWN = Reply.of(421, "4.3.2", "Service shutting down, closing transmission channel")
