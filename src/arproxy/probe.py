"""Ask a server for its authserv-id: the client procedures of draft-kucherawy-sender-auth-caps.

SMTP (section 3): EHLO, look for the AUTHSERV keyword (``AUTHSERV id``, or ``AUTHSERV=id`` as
in the draft's example), QUIT. IMAP (section 4): CAPABILITY, where ``AUTHSERV`` before login
becomes ``AUTHSERV=id`` after it, LOGOUT. POP3 (section 5): CAPA, where the ``AUTHSERV`` line
gets its id in the TRANSACTION state, QUIT. With credentials the procedure logs in and asks
again; what the server says after login is the answer.

Blocking, one connection per call, standard library clients for SMTP and IMAP and a few lines
of our own for POP3 (poplib hides the raw CAPA lines). TLS is verified unless told otherwise.
"""

from __future__ import annotations

import contextlib
import imaplib
import ipaddress
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from arproxy.authres import normalize_authserv_id
from arproxy.authres.trusted import is_plain_authserv_id

Protocol = Literal["smtp", "imap", "pop3"]
Security = Literal["plain", "starttls", "tls"]
Phase = Literal["pre-auth", "post-auth"]

_DEFAULT_PORTS: dict[tuple[Protocol, bool], int] = {
    ("smtp", False): 25,
    ("smtp", True): 465,
    ("imap", False): 143,
    ("imap", True): 993,
    ("pop3", False): 110,
    ("pop3", True): 995,
}
_KEYWORD = "AUTHSERV"
_EHLO_PLACEHOLDER = "localhost"  # replaced by our address literal before EHLO is sent
_MAX_POP3_LINE = 8192
_FORBIDDEN_IN_CREDENTIALS = frozenset("\r\n\0")
_SMTP_MECHANISMS = ("PLAIN", "LOGIN")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if any(char in _FORBIDDEN_IN_CREDENTIALS for char in self.user + self.password):
            raise ValueError("a user name or password must not contain CR, LF or NUL")


@dataclass(frozen=True)
class ProbeOptions:
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


def describe(result: ProbeResult) -> str:
    """One line for people: where, which state, and what the server promised."""
    where = f"{result.host}:{result.port} ({result.protocol}, {result.phase})"
    if not result.advertised:
        return f"{where}: no AUTHSERV, the server makes no promise about Authentication-Results"
    if result.authserv_id is None:
        hint = "; it may name it after login (--user)" if result.phase == "pre-auth" else ""
        return f"{where}: AUTHSERV without an authserv-id{hint}"
    return f"{where}: AUTHSERV, authserv-id {result.authserv_id}"


@dataclass(frozen=True)
class _Seen:
    phase: Phase
    capabilities: tuple[str, ...]
    authserv: Authserv


# --- parsing capability lists (pure) ------------------------------------------------------


def parse_ehlo_keywords(lines: Sequence[str]) -> Authserv:
    """The AUTHSERV keyword in EHLO keyword lines (the reply's lines after the first).

    ``AUTHSERV``, ``AUTHSERV id`` (RFC 5321 keyword and parameter) or ``AUTHSERV=id`` (the
    draft's example); the keyword in any case. Raises ProbeProtocolError for a malformed one.
    """
    return _combine([_keyword_line(line, equals_form=True) for line in lines])


def parse_imap_capabilities(atoms: Sequence[str]) -> Authserv:
    """The AUTHSERV capability among IMAP capability atoms: ``AUTHSERV`` or ``AUTHSERV=id``."""
    found: list[Authserv | None] = []
    for atom in atoms:
        name, equals, value = atom.partition("=")
        if name.upper() != _KEYWORD:
            found.append(None)
        elif equals:
            found.append(Authserv(True, _checked_id(value, atom)))
        else:
            found.append(Authserv(True))
    return _combine(found)


def parse_pop3_capa(lines: Sequence[str]) -> Authserv:
    """The AUTHSERV capability in CAPA lines (RFC 2449): ``AUTHSERV`` or ``AUTHSERV id``."""
    return _combine([_keyword_line(line, equals_form=False) for line in lines])


def _keyword_line(line: str, *, equals_form: bool) -> Authserv | None:
    words = line.split()
    if not words:
        return None
    name, equals, value = words[0].partition("=") if equals_form else (words[0], "", "")
    if name.upper() != _KEYWORD:
        return None
    parameters = [value, *words[1:]] if equals else words[1:]
    if len(parameters) > 1:
        raise ProbeProtocolError(f"AUTHSERV with more than one parameter: {line!r}")
    if not parameters:
        return Authserv(True)
    return Authserv(True, _checked_id(parameters[0], line))


def _checked_id(text: str, seen_in: str) -> str:
    """``text`` if it is an authserv-id the rewrite compares (an RFC 2045 token)."""
    if not is_plain_authserv_id(text):
        raise ProbeProtocolError(f"malformed authserv-id in {seen_in!r}")
    return text


def _combine(found: Sequence[Authserv | None]) -> Authserv:
    announced = [item for item in found if item is not None]
    if not announced:
        return NOT_ADVERTISED
    ids = [item.authserv_id for item in announced if item.authserv_id is not None]
    if len({normalize_authserv_id(authserv_id) for authserv_id in ids}) > 1:
        raise ProbeProtocolError(f"AUTHSERV announced with different ids: {', '.join(ids)}")
    return Authserv(True, ids[0] if ids else None)


# --- targets and TLS ----------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a bare IPv6 address has no port."""
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
    """Verifying, against ``cafile`` if given; ``insecure`` turns every check off."""
    try:
        context = ssl.create_default_context(cafile=options.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeError(f"cannot use the CA file {options.cafile}: {_reason(exc)}") from exc
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# --- the procedures -----------------------------------------------------------------------


def probe(
    protocol: Protocol, host: str, port: int | None = None, options: ProbeOptions | None = None
) -> ProbeResult:
    """Run the procedure of ``protocol``; raises ProbeError when there is no answer."""
    procedures = {"smtp": probe_smtp, "imap": probe_imap, "pop3": probe_pop3}
    return procedures[protocol](host, port, options)


def probe_smtp(
    host: str, port: int | None = None, options: ProbeOptions | None = None
) -> ProbeResult:
    """EHLO [STARTTLS, EHLO] [AUTH, EHLO], QUIT."""
    options = options or ProbeOptions()
    port = port or default_port("smtp", options.security)
    with _translated_errors(options):
        client = _smtp_connect(host, port, options)
        try:
            seen = _smtp_procedure(client, options)
        finally:
            _quietly(client.quit)
    return _result("smtp", host, port, seen)


def probe_imap(
    host: str, port: int | None = None, options: ProbeOptions | None = None
) -> ProbeResult:
    """CAPABILITY [STARTTLS, CAPABILITY] [LOGIN, CAPABILITY], LOGOUT."""
    options = options or ProbeOptions()
    port = port or default_port("imap", options.security)
    with _translated_errors(options):
        conn: imaplib.IMAP4
        if options.security == "tls":
            conn = imaplib.IMAP4_SSL(
                host, port, ssl_context=client_tls_context(options), timeout=options.timeout
            )
        else:
            conn = imaplib.IMAP4(host, port, timeout=options.timeout)
        try:
            seen = _imap_procedure(conn, options)
        finally:
            _quietly(conn.logout)
    return _result("imap", host, port, seen)


def probe_pop3(
    host: str, port: int | None = None, options: ProbeOptions | None = None
) -> ProbeResult:
    """CAPA [STLS, CAPA] [USER, PASS, CAPA], QUIT."""
    options = options or ProbeOptions()
    port = port or default_port("pop3", options.security)
    with _translated_errors(options):
        pop = _Pop3Channel(socket.create_connection((host, port), options.timeout))
        try:
            if options.security == "tls":
                pop.upgrade(client_tls_context(options), host)
            seen = _pop3_procedure(pop, host, options)
        finally:
            _quietly(lambda: pop.command("QUIT"))
            pop.close()
    return _result("pop3", host, port, seen)


def _result(protocol: Protocol, host: str, port: int, seen: _Seen) -> ProbeResult:
    return ProbeResult(
        protocol,
        host,
        port,
        seen.authserv.advertised,
        seen.authserv.authserv_id,
        seen.phase,
        seen.capabilities,
    )


# --- SMTP ---


def _smtp_connect(host: str, port: int, options: ProbeOptions) -> smtplib.SMTP:
    if options.security == "tls":
        return smtplib.SMTP_SSL(
            host,
            port,
            local_hostname=_EHLO_PLACEHOLDER,
            timeout=options.timeout,
            context=client_tls_context(options),
        )
    return smtplib.SMTP(host, port, local_hostname=_EHLO_PLACEHOLDER, timeout=options.timeout)


def _smtp_procedure(client: smtplib.SMTP, options: ProbeOptions) -> _Seen:
    if client.sock is None:
        raise ProbeConnectionError("the server closed the connection")
    name = _address_literal(client.sock.getsockname()[0])
    client.local_hostname = name
    keywords = _smtp_ehlo(client, name)
    if options.security == "starttls":
        if not client.has_extn("starttls"):
            raise ProbeProtocolError("the server does not offer STARTTLS")
        client.starttls(context=client_tls_context(options))
        keywords = _smtp_ehlo(client, name)
    if options.credentials is None:
        return _Seen("pre-auth", keywords, parse_ehlo_keywords(keywords))
    _smtp_login(client, options.credentials, options.security)
    keywords = _smtp_ehlo(client, name)
    return _Seen("post-auth", keywords, parse_ehlo_keywords(keywords))


def _smtp_ehlo(client: smtplib.SMTP, name: str) -> tuple[str, ...]:
    """The keyword lines of the EHLO reply; none if EHLO is refused (then there are none)."""
    code, reply = client.ehlo(name)
    lines = [_text(line).strip() for line in reply.split(b"\n")]
    if code == 250:
        return tuple(line for line in lines[1:] if line)
    if 500 <= code < 600:
        return ()
    raise ProbeProtocolError(f"EHLO refused: {code} {' '.join(lines)}")


def _smtp_login(client: smtplib.SMTP, credentials: Credentials, security: Security) -> None:
    """One AUTH attempt, PLAIN or else LOGIN (smtplib's login() would try every mechanism
    in turn, each failure counting against us at a server that limits them)."""
    if not client.has_extn("auth"):
        hint = " before STARTTLS (try --starttls)" if security == "plain" else ""
        raise ProbeLoginError(f"the server offers no AUTH{hint}")
    offered = client.esmtp_features["auth"].upper().split()
    mechanism = next((name for name in _SMTP_MECHANISMS if name in offered), None)
    if mechanism is None:
        raise ProbeLoginError(f"no AUTH mechanism we speak (PLAIN, LOGIN) in: {' '.join(offered)}")
    client.user, client.password = credentials.user, credentials.password
    answer = client.auth_plain if mechanism == "PLAIN" else client.auth_login
    try:
        client.auth(mechanism, answer)
    except smtplib.SMTPAuthenticationError as exc:
        raise ProbeLoginError(f"AUTH refused: {exc.smtp_code} {_text(exc.smtp_error)}") from exc


def _address_literal(address: str) -> str:
    """Our EHLO name: the address literal of our end of the connection (RFC 5321 4.1.3)."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


# --- IMAP ---


def _imap_procedure(conn: imaplib.IMAP4, options: ProbeOptions) -> _Seen:
    if options.security == "starttls":
        if "STARTTLS" not in conn.capabilities:
            raise ProbeProtocolError("the server does not offer STARTTLS")
        conn.starttls(ssl_context=client_tls_context(options))
    # A PREAUTH greeting: the connection is already authenticated (RFC 3501 section 7.1.4).
    phase: Phase = "post-auth" if conn.state == "AUTH" else "pre-auth"
    atoms = _imap_capability(conn)
    if options.credentials is not None and phase == "pre-auth":
        try:
            conn.login(options.credentials.user, options.credentials.password)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            raise ProbeLoginError(f"LOGIN refused: {_imap_reason(exc)}") from exc
        phase = "post-auth"
        atoms = _imap_capability(conn)
    return _Seen(phase, atoms, parse_imap_capabilities(atoms))


def _imap_capability(conn: imaplib.IMAP4) -> tuple[str, ...]:
    """The atoms of a fresh CAPABILITY reply (not those of an earlier response code)."""
    conn.untagged_responses.pop("CAPABILITY", None)
    status, data = conn.capability()
    if status != "OK":
        raise ProbeProtocolError(f"CAPABILITY failed: {status}")
    return tuple(word for item in data if isinstance(item, bytes) for word in _text(item).split())


# --- POP3 ---


class _Pop3Channel:
    """POP3 lines over a socket: commands, single-line and multi-line replies, STLS."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")

    def read_line(self) -> str:
        line = self._file.readline(_MAX_POP3_LINE + 1)
        if not line:
            raise ProbeConnectionError("the server closed the connection")
        if len(line) > _MAX_POP3_LINE:
            raise ProbeProtocolError("a reply line longer than 8 KiB")
        return _text(line.rstrip(b"\r\n"))

    def command(self, line: str) -> str:
        self._sock.sendall(line.encode("utf-8") + b"\r\n")
        return self.read_line()

    def multi_line(self) -> tuple[str, ...]:
        """The lines of a multi-line reply up to the "." line, dot-unstuffed."""
        lines: list[str] = []
        while (line := self.read_line()) != ".":
            lines.append(line[1:] if line.startswith(".") else line)
        return tuple(lines)

    def upgrade(self, context: ssl.SSLContext, host: str) -> None:
        self._file.close()
        self._sock = context.wrap_socket(self._sock, server_hostname=host)
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _pop3_procedure(pop: _Pop3Channel, host: str, options: ProbeOptions) -> _Seen:
    greeting = pop.read_line()
    if not _pop3_ok(greeting):
        raise ProbeProtocolError(f"greeting: {greeting}")
    if options.security == "starttls":
        reply = pop.command("STLS")
        if not _pop3_ok(reply):
            raise ProbeProtocolError(f"STLS refused: {reply}")
        pop.upgrade(client_tls_context(options), host)
    lines = _pop3_capa(pop)
    if options.credentials is None:
        return _Seen("pre-auth", lines, parse_pop3_capa(lines))
    for command in (f"USER {options.credentials.user}", f"PASS {options.credentials.password}"):
        reply = pop.command(command)
        if not _pop3_ok(reply):
            raise ProbeLoginError(f"{command.split()[0]} refused: {reply}")
    lines = _pop3_capa(pop)
    return _Seen("post-auth", lines, parse_pop3_capa(lines))


def _pop3_capa(pop: _Pop3Channel) -> tuple[str, ...]:
    """The CAPA lines; none from a server without CAPA (it has no extensions, RFC 2449)."""
    reply = pop.command("CAPA")
    if _pop3_ok(reply):
        return pop.multi_line()
    if reply == "-ERR" or reply.startswith("-ERR "):
        return ()
    raise ProbeProtocolError(f"CAPA: {reply}")


def _pop3_ok(reply: str) -> bool:
    return reply == "+OK" or reply.startswith("+OK ")


# --- errors -------------------------------------------------------------------------------


@contextlib.contextmanager
def _translated_errors(options: ProbeOptions) -> Iterator[None]:
    """Every failure of the client libraries as a ProbeError with a readable reason."""
    try:
        yield
    except ProbeError:
        raise
    except smtplib.SMTPServerDisconnected as exc:
        raise ProbeConnectionError(f"the server closed the connection ({exc})") from exc
    except smtplib.SMTPResponseException as exc:
        raise ProbeProtocolError(f"{exc.smtp_code} {_text(exc.smtp_error)}") from exc
    except smtplib.SMTPException as exc:
        raise ProbeProtocolError(str(exc)) from exc
    except imaplib.IMAP4.abort as exc:
        raise ProbeConnectionError(f"connection lost: {_imap_reason(exc)}") from exc
    except imaplib.IMAP4.error as exc:
        raise ProbeProtocolError(_imap_reason(exc)) from exc
    except TimeoutError as exc:
        raise ProbeConnectionError(f"no answer within {options.timeout:g} s") from exc
    except OSError as exc:
        raise ProbeConnectionError(_reason(exc)) from exc
    except UnicodeError as exc:  # only what we send can fail to encode: the credentials
        raise ProbeLoginError(
            "this protocol cannot send a non-ASCII user name or password"
        ) from exc


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    return exc.strerror or str(exc)


def _imap_reason(exc: imaplib.IMAP4.error) -> str:
    """imaplib's message, which is the server's bytes for a NO or BAD reply."""
    detail = exc.args[0] if exc.args else ""
    return _text(detail) if isinstance(detail, bytes | str) else str(exc)


def _quietly(action: Callable[[], object]) -> None:
    """Say goodbye; the answer is already known, so a failure here changes nothing."""
    with contextlib.suppress(OSError, ProbeError, imaplib.IMAP4.error):
        action()


def _text(data: bytes | str) -> str:
    """Server text for parsing and for reasons on a terminal: printable ASCII, every other
    character or byte written as an escape (a server must not drive our user's terminal)."""
    if isinstance(data, bytes):
        data = data.decode("ascii", errors="backslashreplace")
    text = data.encode("ascii", errors="backslashreplace").decode("ascii")
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
