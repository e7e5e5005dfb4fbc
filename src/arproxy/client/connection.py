"""The plumbing the three procedures share: targets and default ports, the TLS context,
failures of the network as ProbeError, the goodbye, and server text made safe to print.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Callable, Iterator

from .model import (
    ProbeConnectionError,
    ProbeError,
    ProbeLoginError,
    ProbeOptions,
    Protocol,
    Security,
)

_DEFAULT_PORTS: dict[tuple[Protocol, bool], int] = {
    ("smtp", False): 25,
    ("smtp", True): 465,
    ("imap", False): 143,
    ("imap", True): 993,
    ("pop3", False): 110,
    ("pop3", True): 995,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_target(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a bare IPv6 address has no port.

    Raises ValueError for a bracket left open or a port that is not 1 to 65535.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [address] or [address]:port")
        return host, _port(rest[1:], text) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, text)
    return text, None


def _port(text: str, target: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{target!r}: the port must be a number from 1 to 65535")
    return int(text)


def default_port(protocol: Protocol, security: Security) -> int:
    """25, 143, 110; with implicit TLS 465, 993, 995."""
    return _DEFAULT_PORTS[protocol, security == "tls"]


def client_tls_context(options: ProbeOptions) -> ssl.SSLContext:
    """Verifying, against ``cafile`` if given; ``insecure`` turns every check off.

    Raises ProbeError when the CA file cannot be used.
    """
    try:
        context = ssl.create_default_context(cafile=options.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeError(f"cannot use the CA file {options.cafile}: {reason(exc)}") from exc
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def translated_errors(options: ProbeOptions) -> Iterator[None]:
    """Every failure of the network and of encoding as a ProbeError with a readable reason.

    A protocol module translates its client library's own errors inside this one (smtplib's
    are OSErrors, and must be read as SMTP replies before they reach the OSError branch).
    """
    try:
        yield
    except ProbeError:
        raise
    except TimeoutError as exc:
        raise ProbeConnectionError(f"no answer within {options.timeout:g} s") from exc
    except OSError as exc:
        raise ProbeConnectionError(reason(exc)) from exc
    except UnicodeError as exc:  # only what we send can fail to encode: the credentials
        raise ProbeLoginError(
            "this protocol cannot send a non-ASCII user name or password"
        ) from exc


def reason(exc: OSError) -> str:
    """An OSError as words: the certificate or TLS failure, else the system's message."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    return exc.strerror or str(exc)


def quietly(action: Callable[[], object], *also: type[Exception]) -> None:
    """Say goodbye; the answer is already known, so a failure here (a network error, a
    ProbeError, or one of ``also``) changes nothing."""
    with contextlib.suppress(OSError, ProbeError, *also):
        action()


def server_text(data: bytes | str) -> str:
    """Server text for parsing and for reasons on a terminal: printable ASCII, every other
    character or byte written as an escape (a server must not drive our user's terminal)."""
    if isinstance(data, bytes):
        data = data.decode("ascii", errors="backslashreplace")
    text = data.encode("ascii", errors="backslashreplace").decode("ascii")
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
