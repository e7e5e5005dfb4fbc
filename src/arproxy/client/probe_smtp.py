"""The SMTP procedure (draft-kucherawy-sender-auth-caps section 3): EHLO [STARTTLS, EHLO]
[AUTH, EHLO], QUIT, with the standard library's smtplib. Blocking, one connection per call.
"""

from __future__ import annotations

import contextlib
import ipaddress
import smtplib
from collections.abc import Iterator

from .capabilities import parse_ehlo_keywords
from .connection import client_tls_context, default_port, quietly, server_text, translated_errors
from .model import (
    Credentials,
    ProbeConnectionError,
    ProbeLoginError,
    ProbeOptions,
    ProbeProtocolError,
    ProbeResult,
    Security,
    Seen,
)

_EHLO_PLACEHOLDER = "localhost"  # replaced by our address literal before EHLO is sent
_MECHANISMS = ("PLAIN", "LOGIN")


def probe_smtp(
    host: str, port: int | None = None, options: ProbeOptions | None = None
) -> ProbeResult:
    """EHLO [STARTTLS, EHLO] [AUTH, EHLO], QUIT; ``port`` defaults to 25 (465 with "tls").

    Raises ProbeError (a subclass of it) when there is no answer.
    """
    options = options or ProbeOptions()
    port = port or default_port("smtp", options.security)
    with translated_errors(options), _smtplib_errors():
        client = _connect(host, port, options)
        try:
            seen = _procedure(client, options)
        finally:
            quietly(client.quit)
    return seen.result("smtp", host, port)


def _connect(host: str, port: int, options: ProbeOptions) -> smtplib.SMTP:
    if options.security == "tls":
        return smtplib.SMTP_SSL(
            host,
            port,
            local_hostname=_EHLO_PLACEHOLDER,
            timeout=options.timeout,
            context=client_tls_context(options),
        )
    return smtplib.SMTP(host, port, local_hostname=_EHLO_PLACEHOLDER, timeout=options.timeout)


def _procedure(client: smtplib.SMTP, options: ProbeOptions) -> Seen:
    if client.sock is None:
        raise ProbeConnectionError("the server closed the connection")
    name = _address_literal(client.sock.getsockname()[0])
    client.local_hostname = name
    keywords = _ehlo(client, name)
    if options.security == "starttls":
        if not client.has_extn("starttls"):
            raise ProbeProtocolError("the server does not offer STARTTLS")
        client.starttls(context=client_tls_context(options))
        keywords = _ehlo(client, name)
    if options.credentials is None:
        return Seen("pre-auth", keywords, parse_ehlo_keywords(keywords))
    _login(client, options.credentials, options.security)
    keywords = _ehlo(client, name)
    return Seen("post-auth", keywords, parse_ehlo_keywords(keywords))


def _ehlo(client: smtplib.SMTP, name: str) -> tuple[str, ...]:
    """The keyword lines of the EHLO reply; none if EHLO is refused (then there are none)."""
    code, reply = client.ehlo(name)
    lines = [server_text(line).strip() for line in reply.split(b"\n")]
    if code == 250:
        return tuple(line for line in lines[1:] if line)
    if 500 <= code < 600:
        return ()
    raise ProbeProtocolError(f"EHLO refused: {code} {' '.join(lines)}")


def _login(client: smtplib.SMTP, credentials: Credentials, security: Security) -> None:
    """One AUTH attempt, PLAIN or else LOGIN (smtplib's login() would try every mechanism
    in turn, each failure counting against us at a server that limits them)."""
    if not client.has_extn("auth"):
        hint = " before STARTTLS (try --starttls)" if security == "plain" else ""
        raise ProbeLoginError(f"the server offers no AUTH{hint}")
    offered = client.esmtp_features["auth"].upper().split()
    mechanism = next((name for name in _MECHANISMS if name in offered), None)
    if mechanism is None:
        raise ProbeLoginError(f"no AUTH mechanism we speak (PLAIN, LOGIN) in: {' '.join(offered)}")
    client.user, client.password = credentials.user, credentials.password
    answer = client.auth_plain if mechanism == "PLAIN" else client.auth_login
    try:
        client.auth(mechanism, answer)
    except smtplib.SMTPAuthenticationError as exc:
        raise ProbeLoginError(
            f"AUTH refused: {exc.smtp_code} {server_text(exc.smtp_error)}"
        ) from exc


def _address_literal(address: str) -> str:
    """Our EHLO name: the address literal of our end of the connection (RFC 5321 4.1.3)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


@contextlib.contextmanager
def _smtplib_errors() -> Iterator[None]:
    """smtplib's errors as ProbeErrors, before ``translated_errors`` sees them as OSErrors."""
    try:
        yield
    except smtplib.SMTPServerDisconnected as exc:
        raise ProbeConnectionError(f"the server closed the connection ({exc})") from exc
    except smtplib.SMTPResponseException as exc:
        raise ProbeProtocolError(f"{exc.smtp_code} {server_text(exc.smtp_error)}") from exc
    except smtplib.SMTPException as exc:
        raise ProbeProtocolError(str(exc)) from exc
