"""The probe's values: what it is asked (options, credentials), what it answers (a result),
and how it fails (typed errors). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["smtp", "imap", "pop3"]
Security = Literal["plain", "starttls", "tls"]
Phase = Literal["pre-auth", "post-auth"]

_FORBIDDEN_IN_CREDENTIALS = frozenset("\r\n\0")


class ProbeError(Exception):
    """The probe could not learn the answer; ``str()`` is the reason."""


class ProbeConnectionError(ProbeError):
    """No connection, a TLS failure, a timeout, or a connection closed too early."""


class ProbeProtocolError(ProbeError):
    """A reply the procedure does not allow, a malformed AUTHSERV announcement included."""


class ProbeLoginError(ProbeError):
    """The credentials were refused, or the server offers no way to use them."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password for SMTP AUTH, IMAP LOGIN or POP3 USER/PASS.

    Raises ValueError for CR, LF or NUL, which would end the command line they are sent in.
    """

    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if any(char in _FORBIDDEN_IN_CREDENTIALS for char in self.user + self.password):
            raise ValueError("a user name or password must not contain CR, LF or NUL")


@dataclass(frozen=True)
class ProbeOptions:
    """How to ask; raises ValueError for a timeout that is not a positive number."""

    security: Security = "plain"  # "starttls": upgrade first; "tls": TLS from the first byte
    credentials: Credentials | None = None  # log in and ask again (post-auth)
    cafile: str | None = None  # trust these CAs instead of the system's
    insecure: bool = False  # no certificate verification at all: test servers only
    timeout: float = 30.0  # seconds for the connection and for each reply

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("the timeout must be a positive number of seconds")


@dataclass(frozen=True)
class Authserv:
    """What a capability list says: whether AUTHSERV is there, and its id if it has one."""

    advertised: bool
    authserv_id: str | None = None


NOT_ADVERTISED = Authserv(advertised=False)


@dataclass(frozen=True)
class ProbeResult:
    """The answer of one probe, or (``failed``) the reason there is none."""

    protocol: Protocol
    host: str
    port: int
    advertised: bool
    authserv_id: str | None
    phase: Phase  # the state the answer comes from: "post-auth" once logged in
    capabilities: tuple[str, ...]  # the EHLO keyword lines, IMAP atoms or CAPA lines seen
    error: str | None = None  # set only by ``failed``: why there is no answer

    @classmethod
    def failed(
        cls, protocol: Protocol, host: str, port: int, phase: Phase, error: str
    ) -> ProbeResult:
        return cls(protocol, host, port, False, None, phase, (), error)

    def as_dict(self) -> dict[str, object]:
        return {
            "protocol": self.protocol,
            "host": self.host,
            "port": self.port,
            "phase": self.phase,
            "advertised": self.advertised,
            "authserv_id": self.authserv_id,
            "capabilities": list(self.capabilities),
            "error": self.error,
        }


@dataclass(frozen=True)
class Seen:
    """What one procedure saw in the state it ended in: the answer before host and port."""

    phase: Phase
    capabilities: tuple[str, ...]
    authserv: Authserv

    def result(self, protocol: Protocol, host: str, port: int) -> ProbeResult:
        return ProbeResult(
            protocol,
            host,
            port,
            self.authserv.advertised,
            self.authserv.authserv_id,
            self.phase,
            self.capabilities,
        )
