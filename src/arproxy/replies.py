"""SMTP replies as values: a code, an enhanced status code (RFC 3463) and text.

Every decision arproxy makes ends in one of these, so the server never has to guess
what to send, and a downstream's reply can be handed on exactly as it was given.
"""

from __future__ import annotations

import functools
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
        return self._wire

    @functools.cached_property
    def _wire(self) -> str:
        # Made once per reply: the catalogue's constants (250 Sender OK, Recipient
        # OK...) are written several times per message. A frozen dataclass keeps its
        # fields; the cache sits in the instance dict, outside eq and hash.
        prefix = f"{self.enhanced} " if self.enhanced else ""
        last = len(self.lines) - 1
        return "\r\n".join(
            f"{self.code}{' ' if i == last else '-'}{prefix}{line}".rstrip()
            for i, line in enumerate(self.lines)
        )


def _clean(text: str) -> str:
    if text.isascii() and text.isprintable():
        # Nearly every line (the downstream's replies, our catalogue): for ASCII,
        # isprintable() is exactly "no character _UNSAFE matches"; no regex pass.
        return text.strip()
    return _UNSAFE.sub(" ", text).strip()


# --- The catalogue: every reply arproxy itself gives, so codes stay consistent. ---
# Constants for fixed replies, small functions for those with a variable part.
# RFC 3463 gives the enhanced codes; the section that asks for each reply is named.

OK = Reply.of(250, "2.0.0", "OK")
SENDER_OK = Reply.of(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply.of(250, "2.1.5", "Recipient OK")
SHUTTING_DOWN = Reply.of(421, "4.3.2", "Service shutting down, closing transmission channel")
LOCAL_ERROR = Reply.of(451, "4.3.0", "Local error in processing, try again later")


def greeting_ok(hostname: str) -> Reply:
    """The reply to HELO (RFC 5321 section 4.1.1.1); no enhanced code before EHLO."""
    return Reply.of(250, None, hostname)


def closing(hostname: str) -> Reply:
    """The reply to QUIT (RFC 5321 section 4.1.1.10)."""
    return Reply.of(221, "2.0.0", f"{hostname} closing connection")


# Connection admission (arproxy.admission). A peer that is not a trusted proxy gets
# no reply at all (code 0): it does not speak PROXY anyway.
TOO_MANY_CONNECTIONS = Reply.of(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_CLIENT = Reply.of(421, "4.7.0", "Too many connections from your address")
UNTRUSTED_PROXY = Reply(0, None, ("connection not from a trusted proxy",))


def timeout_exceeded(hostname: str) -> Reply:
    """An idle client is told before it is closed (RFC 5321 section 4.1.1.x: 421)."""
    return Reply.of(421, "4.4.2", f"{hostname} timeout exceeded")


# Commands.
# RFC 3207 section 4.2 allows one TLS layer; Postfix's words.
TLS_ALREADY_ACTIVE = Reply.of(554, "5.5.1", "Error: TLS already active")
# RFC 5321 section 4.1.2 path syntax (Postfix's replies and codes, RFC 3463 X.1.7/X.1.3).
BAD_SENDER_SYNTAX = Reply.of(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply.of(501, "5.1.3", "Bad recipient address syntax")
TLS_FAILED = Reply.of(454, "4.7.0", "TLS handshake failed")
# RFC 4954 section 6: the server cannot decide now (the shared limiter is unreachable).
AUTH_TEMPORARY_FAILURE = Reply.of(454, "4.7.0", "Temporary authentication failure")
LINE_TOO_LONG = Reply.of(500, "5.5.6", "Line too long")
# aiosmtpd's words for the same refusal at the end of DATA, with RFC 3463's code.
LINE_TOO_LONG_IN_DATA = Reply.of(500, "5.5.2", "Line too long (see RFC5321 4.5.3.1.6)")
AUTH_IN_TRANSACTION = Reply.of(503, "5.5.1", "AUTH not permitted during a mail transaction")
INVALID_HELO = Reply.of(501, "5.5.4", "Invalid HELO/EHLO argument")
TOO_MANY_RECIPIENTS = Reply.of(452, "4.5.3", "Too many recipients")


def too_many_errors(hostname: str) -> Reply:
    """Postfix's reply when it closes on a client's errors (RFC 5321 section 3.8: 421)."""
    return Reply.of(421, "4.7.0", f"{hostname} Error: too many errors")


def bare_newline_refusal(hostname: str) -> Reply:
    """Postfix 3.9's reply to a command line ending in a bare LF (it disconnects after)."""
    return Reply.of(550, "5.5.2", f"{hostname} Error: bare <LF> received")


# SMTP AUTH (arproxy.smtpauth, arproxy.ratelimit; RFC 4954 section 6).
AUTH_SUCCESS = Reply.of(235, "2.7.0", "Authentication successful")
AUTH_INVALID = Reply.of(535, "5.7.8", "Authentication credentials invalid")
TOO_MANY_FAILURES = Reply.of(
    421, "4.7.0", "Too many failed authentication attempts, closing connection"
)

# Addresses and parameters (arproxy.extensions; RFC 6531, RFC 6152).
NOT_ASCII_WITHOUT_SMTPUTF8 = Reply.of(
    553, "5.6.7", "Non-ASCII address without SMTPUTF8 (RFC 6531 section 3.5)"
)
SENDER_NOT_UTF8 = Reply.of(553, "5.1.7", "Malformed sender address: not UTF-8")
RECIPIENT_NOT_UTF8 = Reply.of(553, "5.1.3", "Malformed recipient address: not UTF-8")
DOWNSTREAM_LACKS_SMTPUTF8_ADDRESS = Reply.of(
    553,
    "5.6.7",
    "Non-ASCII addresses not permitted: the next server does not offer SMTPUTF8",
)
DOWNSTREAM_LACKS_SMTPUTF8 = Reply.of(
    550,
    "5.6.9",
    "SMTPUTF8 message cannot be transferred: the next server does not offer SMTPUTF8",
)
DOWNSTREAM_LACKS_8BITMIME = Reply.of(
    554,
    "5.6.3",
    "Conversion required but not supported: 8-bit content and the next server "
    "does not offer 8BITMIME (RFC 6152 section 3)",
)

# Relay control (arproxy.policy).
RELAY_DENIED = Reply.of(550, "5.7.1", "Relaying denied: recipient domain is not local")
# RFC 5321 section 3.6.1 and appendix C: source routes in a local part are refused.
ROUTING_DENIED = Reply.of(
    550, "5.7.1", "Relaying denied: %, ! or @ in the local part of a local address"
)

# The message itself (arproxy.intake).
BARE_NEWLINE_REFUSED = Reply.of(
    550, "5.5.2", "Message refused: bare CR or LF in the message (RFC 5321 section 2.3.8)"
)
HEADER_TOO_LARGE = Reply.of(552, "5.3.4", "Message header exceeds the size limit")
TOO_MANY_FIELDS = Reply.of(552, "5.3.4", "Message header has too many fields")
NUL_REFUSED = Reply.of(550, "5.6.0", "Message refused: NUL character in the message")
EIGHT_BIT_HEADER_REFUSED = Reply.of(
    550, "5.6.0", "Message refused: 8-bit characters in the header without SMTPUTF8 (RFC 6532)"
)
HEADER_NOT_UTF8 = Reply.of(
    550, "5.6.0", "Message refused: header bytes that are not UTF-8 (RFC 6532 section 3)"
)
LEADING_CONTINUATION_REFUSED = Reply.of(
    550,
    "5.6.0",
    "Message refused: the header starts with a continuation line (RFC 5322 section 2.2.3)",
)


# The policy verdicts (arproxy.policy; RFC 7372 section 3 for the 5.7.2x codes).
def temporary_dns_error(method: str, enhanced: str) -> Reply:
    return Reply.of(451, enhanced, f"{method}: temporary DNS error, try again later")


def dmarc_rejected(from_domain: str | None) -> Reply:
    return Reply.of(550, "5.7.1", f"DMARC: message rejected by the policy of {from_domain}")


SPF_REJECTED = Reply.of(550, "5.7.23", "SPF: sender not authorized for this client")
IPREV_REJECTED = Reply.of(550, "5.7.25", "iprev: reverse DNS of the client does not match")

# The downstream (arproxy.relay): replies we give when it could not be asked.
DOWNSTREAM_UNAVAILABLE = Reply.of(451, "4.4.1", "Downstream server unavailable, try again later")
DOWNSTREAM_TIMEOUT = Reply.of(
    451, "4.4.1", "Downstream server did not answer in time, try again later"
)
UNSENDABLE_ADDRESS = Reply.of(553, "5.1.3", "Address not accepted: control characters")
MAILBOX_UNAVAILABLE = Reply.of(451, "4.3.0", "Mailbox unavailable, try again later")
# Refusals arproxy itself decides at the relay step, on what the downstream offers
# or what can be sent to it: ours, not the downstream's (the outcome says so).
REFUSED_AT_RELAY = (
    DOWNSTREAM_LACKS_SMTPUTF8,
    DOWNSTREAM_LACKS_SMTPUTF8_ADDRESS,
    DOWNSTREAM_LACKS_8BITMIME,
    UNSENDABLE_ADDRESS,
)


def maildir_delivered(name: str) -> Reply:
    return Reply.of(250, "2.0.0", f"Ok: delivered as {name}")
