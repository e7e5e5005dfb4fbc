"""The one place arproxy reaches into aiosmtpd's private parts.

`SMTPAdapter` is aiosmtpd's `SMTP` with each private hook arproxy needs turned into
a plain method a subclass (`server.ArproxySMTP`) implements. The hooks, and why:

- `line_length_limit` (class attribute read by `SMTP.__init__`): the DATA line
  bound follows `limits.max_line_length` (RFC 5321 section 4.5.3.1.6).
- `_create_session`: our session class, carrying the pipeline's `Session`.
- `_cb_client_connected` and `_reader`: the stream reader becomes
  `streams.ClientReader` (EOF ends reading, not the replies owed; bare LF refused).
- `eof_received`: aiosmtpd cancels the session on EOF; we keep answering.
- `_handler_coroutine`: the session task, observed so no exception goes unretrieved.
- `_tls_protocol`: the TLS layer STARTTLS built, switched to `HalfCloseSSLProtocol`.
- `_timeout_cb`: aiosmtpd closes an idle client without a word; RFC 5321 wants 421.
- `_reset_timeout`: DATA gets its own, longer bound.
- `_getparams`: MAIL/RCPT parameters read by the RFC 5321 grammar and our EHLO offer.
- `_authenticate`, `auth_PLAIN`, `auth_LOGIN`: the synchronous credential hook is
  bypassed so credentials are checked off the event loop.
- `push`: every reply passes here (enhanced codes on aiosmtpd's own replies, a log
  line for each refusal).
- `smtp_EHLO`, `smtp_HELO`: no enhanced code inside the greeting reply.

`tests/unit/test_smtpd.py` fails if any of these disappears from aiosmtpd, and
pyproject pins aiosmtpd below 1.5.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, AnyStr, NoReturn

from aiosmtpd.smtp import SMTP, AuthResult, Session

from arproxy.streams import adopt_reader, adopt_tls_protocol

# What aiosmtpd itself provides and arproxy overrides, reads or calls (see above).
AIOSMTPD_HOOKS = (
    "line_length_limit",
    "_create_session",
    "_cb_client_connected",
    "eof_received",
    "_timeout_cb",
    "_reset_timeout",
    "_getparams",
    "_authenticate",
    "auth_PLAIN",
    "auth_LOGIN",
    "push",
    "smtp_EHLO",
    "smtp_HELO",
    "smtp_MAIL",
    "smtp_RCPT",
    "smtp_DATA",
    "smtp_STARTTLS",
    "challenge_auth",
    "handle_exception",
    "connection_made",
    "connection_lost",
    "_handle_client",
)
# Instance attributes set by aiosmtpd that arproxy reads.
AIOSMTPD_ATTRIBUTES = ("_handler_coroutine", "_tls_protocol", "_reader", "session", "envelope")

_PENDING = "arproxy: credentials to check"

# RFC 3463 codes for the replies aiosmtpd writes itself, which carry none.
_ENHANCED_BY_CODE = {
    221: "2.0.0",
    250: "2.0.0",
    421: "4.3.0",
    451: "4.3.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.5.0",
    555: "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


class SMTPAdapter(SMTP):
    """aiosmtpd's SMTP with its private hooks turned into methods for a subclass."""

    def __init__(self, handler: Any, *, max_line_length: int, **kwargs: Any) -> None:
        # aiosmtpd's DATA line limit (read by its constructor): the text of a line,
        # plus CRLF, plus a transparency dot (RFC 5321 section 4.5.2).
        self.line_length_limit = max_line_length + 3
        super().__init__(handler, **kwargs)
        self._in_greeting_reply = False
        self._parameters_of = "MAIL"  # the command whose parameters _getparams reads

    # --- what a subclass provides (the reader's owner: arproxy.streams.LineOwner) ---

    reject_bare_newline = True

    async def on_client_eof(self, partial: bytes) -> NoReturn:
        """The client sent nothing more; `partial` is an unfinished last line."""
        raise NotImplementedError

    async def on_bare_newline(self, line: bytes) -> NoReturn:
        """A command or AUTH line ended in LF without CR."""
        raise NotImplementedError

    def new_session(self) -> Session:
        return Session(self.loop)

    def on_idle_timeout(self) -> None:
        """The client was idle for longer than the command timeout."""

    def screen_parameters(self, verb: str, params: Sequence[str]) -> dict[str, str | bool] | None:
        """MAIL or RCPT parameters as aiosmtpd's dict, or None for its 501."""
        return SMTP._getparams(self, params)

    async def decide_auth(self, parsed: AuthResult) -> AuthResult:
        """Credentials parsed by aiosmtpd (`auth_data` a LoginPassword) to decide."""
        return parsed

    def log_reply(self, status: str) -> None:
        """Every reply, as written (CRLF between lines)."""

    def after_reply(self) -> None:
        """A reply was written."""

    # --- what aiosmtpd's private parts give access to ---

    @property
    def session_task(self) -> asyncio.Task[None] | None:
        task: asyncio.Task[None] | None = self._handler_coroutine
        return task

    def set_timeout(self, seconds: float | None = None) -> None:
        """The idle bound from now on (None: the command timeout)."""
        self._reset_timeout(seconds)

    # --- the overrides ---

    def _create_session(self) -> Session:
        return self.new_session()

    def _timeout_cb(self) -> None:
        self.on_idle_timeout()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._tls_protocol is not None:
            # After STARTTLS: give the TLS layer our EOF handling (arproxy.streams).
            adopt_tls_protocol(self._tls_protocol)

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super()._cb_client_connected(adopt_reader(reader, self), writer)

    def eof_received(self) -> bool | None:
        """The client closed its sending side: stop reading, but keep answering.

        aiosmtpd cancels the session here, losing the replies owed for the
        commands already buffered (a pipelined end of DATA and QUIT, RFC 5321
        section 3.8). The reader hands those over first and then reports the EOF
        (`on_client_eof`), which closes the connection. True keeps a plain TCP
        socket half-open; over TLS, arproxy.streams keeps it open.
        """
        asyncio.StreamReaderProtocol.eof_received(self)  # feeds EOF to the reader
        # Over TLS the return value means nothing (asyncio warns about True); the
        # transport may be closing already, so its extra info is not asked.
        session = self.session
        return session is None or session.ssl is None

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._parameters_of = "MAIL"
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._parameters_of = "RCPT"
        await super().smtp_RCPT(arg)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        return self.screen_parameters(self._parameters_of, params)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd's hook is synchronous; hand the credentials back to the async
        # auth_PLAIN / auth_LOGIN below, which decide off the event loop.
        return AuthResult(success=False, handled=False, message=_PENDING, auth_data=auth_data)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._decide(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._decide(await super().auth_LOGIN(server, args))

    async def _decide(self, parsed: AuthResult) -> AuthResult:
        if parsed.message is not _PENDING:
            return parsed  # cancelled by the client, or already answered by aiosmtpd
        return await self.decide_auth(parsed)

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._greeting(super().smtp_EHLO, hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._greeting(super().smtp_HELO, hostname)

    async def _greeting(self, command: Callable[[str], Awaitable[None]], hostname: str) -> None:
        # The EHLO lines (250-PIPELINING...) and the HELO reply get no enhanced code.
        self._in_greeting_reply = True
        try:
            await command(hostname)
        finally:
            self._in_greeting_reply = False

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            if not self._in_greeting_reply:
                status = with_enhanced_code(status)
            self.log_reply(status)
        await super().push(status)
        self.after_reply()


def with_enhanced_code(status: str) -> str:
    """aiosmtpd's own reply `status` with the RFC 3463 code its reply code implies;
    a reply that has one (or where none belongs: 220, 235, 334, 354) is unchanged."""
    if _HAS_ENHANCED.match(status) or len(status) < 4 or not status[:3].isdigit():
        return status
    enhanced = _ENHANCED_BY_CODE.get(int(status[:3]))
    if enhanced is None:
        return status  # 220, 235, 334, 354: no enhanced code belongs there
    return f"{status[:4]}{enhanced} {status[4:]}"
