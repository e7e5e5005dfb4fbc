"""The IMAP procedure (draft-kucherawy-sender-auth-caps section 4): CAPABILITY [STARTTLS,
CAPABILITY] [LOGIN, CAPABILITY], LOGOUT, with the standard library's imaplib. ``AUTHSERV``
before login becomes ``AUTHSERV=id`` after it. Blocking, one connection per call.
"""

from __future__ import annotations

import contextlib
import imaplib
from collections.abc import Iterator

from .capabilities import parse_imap_capabilities
from .connection import client_tls_context, default_port, quietly, server_text, translated_errors
from .model import (
    Phase,
    ProbeConnectionError,
    ProbeLoginError,
    ProbeOptions,
    ProbeProtocolError,
    ProbeResult,
    Seen,
)


def probe_imap(
    host: str, port: int | None = None, options: ProbeOptions | None = None
) -> ProbeResult:
    """CAPABILITY [STARTTLS, CAPABILITY] [LOGIN, CAPABILITY], LOGOUT; ``port`` defaults to
    143 (993 with "tls"). Raises ProbeError (a subclass of it) when there is no answer.
    """
    options = options or ProbeOptions()
    port = port or default_port("imap", options.security)
    with translated_errors(options), _imaplib_errors():
        conn: imaplib.IMAP4
        if options.security == "tls":
            conn = imaplib.IMAP4_SSL(
                host, port, ssl_context=client_tls_context(options), timeout=options.timeout
            )
        else:
            conn = imaplib.IMAP4(host, port, timeout=options.timeout)
        try:
            seen = _procedure(conn, options)
        finally:
            quietly(conn.logout, imaplib.IMAP4.error)
    return seen.result("imap", host, port)


def _procedure(conn: imaplib.IMAP4, options: ProbeOptions) -> Seen:
    if options.security == "starttls":
        if "STARTTLS" not in conn.capabilities:
            raise ProbeProtocolError("the server does not offer STARTTLS")
        conn.starttls(ssl_context=client_tls_context(options))
    # A PREAUTH greeting: the connection is already authenticated (RFC 3501 section 7.1.4).
    phase: Phase = "post-auth" if conn.state == "AUTH" else "pre-auth"
    atoms = _capability(conn)
    if options.credentials is not None and phase == "pre-auth":
        try:
            conn.login(options.credentials.user, options.credentials.password)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise ProbeLoginError(f"LOGIN refused: {_reason(exc)}") from exc
        phase = "post-auth"
        atoms = _capability(conn)
    return Seen(phase, atoms, parse_imap_capabilities(atoms))


def _capability(conn: imaplib.IMAP4) -> tuple[str, ...]:
    """The atoms of a fresh CAPABILITY reply (not those of an earlier response code)."""
    conn.untagged_responses.pop("CAPABILITY", None)
    status, data = conn.capability()
    if status != "OK":
        raise ProbeProtocolError(f"CAPABILITY failed: {status}")
    return tuple(
        word for item in data if isinstance(item, bytes) for word in server_text(item).split()
    )


def _reason(exc: imaplib.IMAP4.error) -> str:
    """imaplib's message, which is the server's bytes for a NO or BAD reply."""
    detail = exc.args[0] if exc.args else ""
    return server_text(detail) if isinstance(detail, bytes | str) else str(exc)


@contextlib.contextmanager
def _imaplib_errors() -> Iterator[None]:
    """imaplib's errors as ProbeErrors: ``abort`` is a lost connection, the rest a reply."""
    try:
        yield
    except imaplib.IMAP4.abort as exc:
        raise ProbeConnectionError(f"connection lost: {_reason(exc)}") from exc
    except imaplib.IMAP4.error as exc:
        raise ProbeProtocolError(_reason(exc)) from exc
