"""The POP3 procedure (draft-kucherawy-sender-auth-caps section 5): CAPA [STLS, CAPA]
[USER, PASS, CAPA], QUIT. The ``AUTHSERV`` CAPA line gets its id in the TRANSACTION state.
A few lines of our own rather than poplib, which hides the raw CAPA lines. Blocking, one
connection per call.
"""

from __future__ import annotations

import socket
import ssl

from .capabilities import parse_pop3_capa
from .connection import client_tls_context, default_port, quietly, server_text, translated_errors
from .model import (
    ProbeConnectionError,
    ProbeLoginError,
    ProbeOptions,
    ProbeProtocolError,
    ProbeResult,
    Seen,
)

_MAX_LINE = 8192


def probe_pop3(
    host: str, port: int | None = None, options: ProbeOptions | None = None
) -> ProbeResult:
    """CAPA [STLS, CAPA] [USER, PASS, CAPA], QUIT; ``port`` defaults to 110 (995 with
    "tls"). Raises ProbeError (a subclass of it) when there is no answer.
    """
    options = options or ProbeOptions()
    port = port or default_port("pop3", options.security)
    with translated_errors(options):
        pop = _Channel(socket.create_connection((host, port), options.timeout))
        try:
            if options.security == "tls":
                pop.upgrade(client_tls_context(options), host)
            seen = _procedure(pop, host, options)
        finally:
            quietly(lambda: pop.command("QUIT"))
            pop.close()
    return seen.result("pop3", host, port)


class _Channel:
    """POP3 lines over a socket: commands, single-line and multi-line replies, STLS."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")

    def read_line(self) -> str:
        line = self._file.readline(_MAX_LINE + 1)
        if not line:
            raise ProbeConnectionError("the server closed the connection")
        if len(line) > _MAX_LINE:
            raise ProbeProtocolError("a reply line longer than 8 KiB")
        return server_text(line.rstrip(b"\r\n"))

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


def _procedure(pop: _Channel, host: str, options: ProbeOptions) -> Seen:
    greeting = pop.read_line()
    if not _ok(greeting):
        raise ProbeProtocolError(f"greeting: {greeting}")
    if options.security == "starttls":
        reply = pop.command("STLS")
        if not _ok(reply):
            raise ProbeProtocolError(f"STLS refused: {reply}")
        pop.upgrade(client_tls_context(options), host)
    lines = _capa(pop)
    if options.credentials is None:
        return Seen("pre-auth", lines, parse_pop3_capa(lines))
    for command in (f"USER {options.credentials.user}", f"PASS {options.credentials.password}"):
        reply = pop.command(command)
        if not _ok(reply):
            raise ProbeLoginError(f"{command.split()[0]} refused: {reply}")
    lines = _capa(pop)
    return Seen("post-auth", lines, parse_pop3_capa(lines))


def _capa(pop: _Channel) -> tuple[str, ...]:
    """The CAPA lines; none from a server without CAPA (it has no extensions, RFC 2449)."""
    reply = pop.command("CAPA")
    if _ok(reply):
        return pop.multi_line()
    if reply == "-ERR" or reply.startswith("-ERR "):
        return ()
    raise ProbeProtocolError(f"CAPA: {reply}")


def _ok(reply: str) -> bool:
    return reply == "+OK" or reply.startswith("+OK ")
