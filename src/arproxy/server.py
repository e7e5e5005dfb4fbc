"""The SMTP listener: aiosmtpd glue and nothing else.

`SessionHandler` turns aiosmtpd's hooks into calls on the pipeline and the
pipeline's `Reply` values back into reply lines. `ArproxySMTP` adds what aiosmtpd
lacks: enhanced status codes on its own replies, per-session state that is cleaned
up when a client simply disconnects, and a registry so that SIGTERM can drain.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Sequence
from typing import Any, AnyStr, NoReturn

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
)

from arproxy import extensions
from arproxy.checks.runner import SessionChecks
from arproxy.config import Config
from arproxy.pipeline import ClientInfo, Pipeline, Transaction, printable
from arproxy.ratelimit import client_key
from arproxy.replies import LOCAL_ERROR, SENDER_OK, SHUTTING_DOWN, Reply
from arproxy.smtpauth import Authenticator
from arproxy.streams import adopt_reader, adopt_tls_protocol
from arproxy.tls import ReloadableContext

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_PENDING = "arproxy: credentials to check"
TLS_FAILED = Reply.of(454, "4.7.0", "TLS handshake failed")
LINE_TOO_LONG = Reply.of(500, "5.5.6", "Line too long")
# aiosmtpd's words for the same refusal at the end of DATA, with RFC 3463's code.
LINE_TOO_LONG_IN_DATA = Reply.of(500, "5.5.2", "Line too long (see RFC5321 4.5.3.1.6)")
AUTH_IN_TRANSACTION = Reply.of(503, "5.5.1", "AUTH not permitted during a mail transaction")
# Per session: a client re-sending EHLO (each starts an SPF check) or anything else
# without end is cut off with aiosmtpd's "421 4.7.0 <cmd> sent too many times".
COMMAND_CALL_LIMITS = {"EHLO": 50, "HELO": 50, "*": 5000}
INVALID_HELO = Reply.of(501, "5.5.4", "Invalid HELO/EHLO argument")
_HELO_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
PROXY_HEADER_TIMEOUT = 5.0  # seconds a trusted proxy has to send the PROXY header
TOO_MANY_CONNECTIONS = Reply.of(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_CLIENT = Reply.of(421, "4.7.0", "Too many connections from your address")
# A peer that is not a trusted proxy gets no reply: it does not speak PROXY anyway.
UNTRUSTED_PROXY = Reply(0, None, ("connection not from a trusted proxy",))

log = logging.getLogger("arproxy.server")

IDENT = "ESMTP arproxy"

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


class ArproxySession(Session):
    """aiosmtpd's session plus our checks and the mail transaction in progress."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.client_ip: str | None = None  # from the socket, or the PROXY header
        self.auth_identity: str | None = None
        self.checks: SessionChecks | None = None
        self.transaction: Transaction | None = None
        self.offered: frozenset[str] = frozenset()  # keywords of our last EHLO reply


def bare_newline_refusal(hostname: str) -> Reply:
    """Postfix 3.9's reply to a command line ending in a bare LF (it disconnects after)."""
    return Reply.of(550, "5.5.2", f"{hostname} Error: bare <LF> received")


class SessionRegistry:
    """The open sessions of one listener, so that shutdown can drain them."""

    def __init__(self) -> None:
        self.open: set[ArproxySMTP] = set()
        self.draining = False

    def refusal_for(self, peer_ip: str, config: Config) -> Reply | None:
        """Why a new connection from `peer_ip` may not even get a banner, if so."""
        if self.draining:
            return SHUTTING_DOWN
        # Every open socket counts against the total (it holds memory and a file);
        # the per-address limit counts sessions in progress (see count_client).
        if len(self.open) >= config.limits.max_connections:
            return TOO_MANY_CONNECTIONS
        if config.server.proxy_protocol and not _in_networks(
            peer_ip, config.server.trusted_proxies
        ):
            return UNTRUSTED_PROXY
        if not config.server.proxy_protocol and (
            self.count_client(peer_ip) >= config.limits.max_connections_per_ip
        ):
            return TOO_MANY_FROM_CLIENT
        return None

    async def wait_closed(self, timeout: float) -> None:
        """After drain: let the closed sessions' connection_lost run (it starts their
        downstream clean-up) before the service stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.open and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def count_client(self, client_ip: str) -> int:
        """Sessions in progress from this client: per address for IPv4, per /64 for
        IPv6 (one IPv6 host has a whole /64 to pick addresses from). A session that
        has been answered 221 or is closing is over for the client, which may
        already open its next one (Postfix does as soon as it has its 250): it no
        longer counts."""
        key = client_key(client_ip)
        return sum(
            1
            for protocol in self.open
            if protocol.in_progress and client_key(protocol.client_text) == key
        )

    async def drain(self, grace: float) -> None:
        """Close idle sessions now, busy ones when done, the rest after `grace`."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.open and loop.time() < deadline:
            for protocol in list(self.open):
                if protocol.is_idle:
                    protocol.close_with(SHUTTING_DOWN)
            await asyncio.sleep(0.05)
        for protocol in list(self.open):
            log.warning("session %s still busy after %.0fs: closing it", protocol.peer_text, grace)
            protocol.close_with(SHUTTING_DOWN)


class ArproxySMTP(SMTP):
    def __init__(self, handler: SessionHandler, registry: SessionRegistry, **kwargs: Any) -> None:
        # aiosmtpd's DATA line limit (read by its constructor): the text of a line,
        # plus CRLF, plus a transparency dot (RFC 5321 section 4.5.2).
        self.line_length_limit = handler.config.limits.max_line_length + 3
        super().__init__(handler, **kwargs)
        self.pipeline = handler.pipeline
        self.config = handler.config
        self.registry = registry
        self._in_greeting_reply = False
        self._refused = False
        self._parameters_of = "MAIL"  # the command whose parameters _getparams reads
        # RFC 5321 section 2.3.8: command lines end in CRLF; "normalize" tolerates LF.
        self.reject_bare_newline = handler.config.limits.bare_newline == "reject"
        self.quitting = False  # answered 221: over for the client
        self._reply_logged = False  # the next reply's decision was logged already
        self._close_after_reply = False

    def _create_session(self) -> ArproxySession:
        return ArproxySession(self.loop)

    @property
    def peer_text(self) -> str:
        peer = getattr(self.session, "peer", None)
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unknown"

    @property
    def in_progress(self) -> bool:
        """Not yet answered 221 and not closing: counts against the per-address limit."""
        transport = self.transport
        return not self.quitting and transport is not None and not transport.is_closing()

    @property
    def is_idle(self) -> bool:
        session = self.session
        return not isinstance(session, ArproxySession) or session.transaction is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # after STARTTLS: a new transport, same client
            before = self.session
            super().connection_made(transport)  # aiosmtpd starts a new session here
            if self._tls_protocol is not None:
                adopt_tls_protocol(self._tls_protocol)
            self._carry_over(before)
            return
        peer = transport.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else "0.0.0.0"
        refusal = self.registry.refusal_for(peer_ip, self.config)
        if refusal is not None:
            # Refused before aiosmtpd sees the connection: no session, no banner.
            self._refused = True
            log.warning(
                "connect from %s refused: %s", peer_ip, refusal if refusal.code else refusal.text
            )
            if isinstance(transport, asyncio.WriteTransport) and refusal.code != 0:
                transport.write(str(refusal).encode("ascii") + b"\r\n")
            transport.close()
            return
        super().connection_made(transport)
        self.registry.open.add(self)
        assert self._handler_coroutine is not None
        self._handler_coroutine.add_done_callback(self._session_task_done)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and self.session is not None:
            self.session.ssl = ssl_object  # implicit TLS: encrypted from the first byte
        if not self.config.server.proxy_protocol:
            self.admit_client(peer_ip)

    def _carry_over(self, before: Session | None) -> None:
        """Keep what belongs to the connection across STARTTLS: the client's address
        and its checks (iprev). RFC 3207 4.2 resets the rest: HELO, transaction."""
        after = self.session
        if not isinstance(before, ArproxySession) or not isinstance(after, ArproxySession):
            return
        after.client_ip = before.client_ip
        after.checks = before.checks
        if before.transaction is not None:
            self.pipeline.in_background(before.transaction.close())
        if after.checks is not None:
            after.checks.on_starttls()

    def admit_client(self, client_ip: str) -> bool:
        """The client's address is known (PROXY header or socket): start its checks."""
        assert isinstance(self.session, ArproxySession)
        self.session.client_ip = client_ip
        log.info(
            "connect from %s%s",
            client_ip,
            f" via proxy {self.peer_text}" if self.config.server.proxy_protocol else "",
        )
        if self.registry.count_client(client_ip) > self.config.limits.max_connections_per_ip:
            log.warning("client %s over max_connections_per_ip: closing", client_ip)
            self.close_with(TOO_MANY_FROM_CLIENT, logged=True)
            return False
        self.session.checks = self.pipeline.start_session(client_ip)
        return True

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # never reached aiosmtpd, nothing to clean up
        self.registry.open.discard(self)
        session = self.session
        super().connection_lost(error)
        if isinstance(session, ArproxySession):
            # No hook runs when a client just disconnects: stop its checks and
            # abandon the downstream transaction here, or they would linger.
            if session.checks is not None:
                session.checks.close()
            if session.transaction is not None:
                transaction, session.transaction = session.transaction, None
                log.info(
                    "id=%s client=%s connection closed before the end of the transaction: "
                    "nothing relayed",
                    transaction.queue_id,
                    self.client_text,
                )
                self.pipeline.in_background(transaction.close())
        log.info("disconnect from %s", self.client_text)

    def _session_task_done(self, task: asyncio.Future[None]) -> None:
        """aiosmtpd never awaits its session task: observe how it ended, so that no
        exception goes unretrieved (asyncio 3.11's wait_for can swallow the
        cancellation and let a session run on after its connection is gone)."""
        if task.cancelled() or (error := task.exception()) is None:
            return
        if self.transport is None or isinstance(error, ConnectionError):
            log.info("client=%s session ended with its connection: %r", self.client_text, error)
        else:
            log.error("client=%s session failed: %s", self.client_text, error, exc_info=error)

    # --- the client's byte stream (arproxy.streams) ---

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
        log.debug("client=%s closed its sending side", self.client_text)
        asyncio.StreamReaderProtocol.eof_received(self)  # feeds EOF to the reader
        # Over TLS the return value means nothing (asyncio warns about True); the
        # transport may be closing already, so its extra info is not asked.
        session = self.session
        return session is None or session.ssl is None

    async def on_client_eof(self, partial: bytes) -> NoReturn:
        if partial:
            # RFC 5321 section 2.3.8: no command without its line end.
            log.info(
                "client=%s closed the connection inside a line: %d octets ignored",
                self.client_text,
                len(partial),
            )
        await self._close_and_wait()

    async def on_bare_newline(self, line: bytes) -> NoReturn:
        reply = bare_newline_refusal(self.config.server.hostname)
        log.info(
            "%s command line ending in bare LF %s: %s, closing",
            self.log_prefix,
            printable(line[:80].decode("ascii", "backslashreplace")),
            reply,
        )
        self._reply_logged = True
        await self.push(str(reply))
        await self._close_and_wait()

    async def _close_and_wait(self) -> NoReturn:
        # Everything before was answered (commands are handled in order). The
        # close ends in connection_lost, which cancels this session task.
        transport = self.transport
        if transport is not None:
            transport.close()
        await self.loop.create_future()
        raise ConnectionResetError("connection closed")  # not reached: cancelled first

    @property
    def log_prefix(self) -> str:
        """`id=QUEUEID client=IP` within a transaction, `client=IP` outside one."""
        session = self.session
        if isinstance(session, ArproxySession) and session.transaction is not None:
            return f"id={session.transaction.queue_id} client={self.client_text}"
        return f"client={self.client_text}"

    def reply_logged(self) -> None:
        """The decision behind the next reply has its log line: do not log it twice."""
        self._reply_logged = True

    def close_after_reply(self) -> None:
        """Close once the next reply is written."""
        self._close_after_reply = True

    @property
    def client_text(self) -> str:
        session = self.session
        if isinstance(session, ArproxySession) and session.client_ip is not None:
            return session.client_ip
        return self.peer_text

    # --- SMTP AUTH: aiosmtpd parses PLAIN and LOGIN, our Authenticator decides ---

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        # aiosmtpd's hook is synchronous; hand the credentials back to the async
        # auth_PLAIN / auth_LOGIN below, which check them off the event loop.
        return AuthResult(success=False, handled=False, message=_PENDING, auth_data=auth_data)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._decide_auth(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._decide_auth(await super().auth_LOGIN(server, args))

    async def _decide_auth(self, parsed: AuthResult) -> AuthResult:
        authenticator = self.event_handler.authenticator
        if parsed.message is not _PENDING or authenticator is None:
            return parsed  # cancelled by the client, or already answered by aiosmtpd
        assert isinstance(self.session, ArproxySession)
        credentials = parsed.auth_data
        assert isinstance(credentials, LoginPassword)
        outcome = await authenticator.authenticate(
            self.client_text, credentials.login, credentials.password
        )
        checks = self.session.checks
        if outcome.identity is not None:
            self.session.auth_identity = outcome.identity
            if checks is not None:
                checks.on_auth(outcome.identity)
            return AuthResult(success=True, message=str(outcome.reply), auth_data=outcome.identity)
        if checks is not None and outcome.attempted is not None:
            checks.on_auth_failure(outcome.attempted)
        self.reply_logged()  # the authenticator logged the failure
        if outcome.disconnect:
            self.close_with(outcome.reply, logged=True)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=str(outcome.reply))

    def _timeout_cb(self) -> None:
        # aiosmtpd closes an idle connection without a word; RFC 5321 4.1.1.x wants 421.
        self.close_with(Reply.of(421, "4.4.2", f"{self.config.server.hostname} timeout exceeded"))

    def close_with(self, reply: Reply, *, logged: bool = False) -> None:
        """Send `reply` (a 421, RFC 5321 section 3.8) and close, whatever the session
        is doing; logged here unless the caller logged it."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            if not logged:
                log.info("%s reply %r, closing", self.log_prefix, str(reply))
            transport.write(str(reply).encode("ascii") + b"\r\n")
            transport.close()

    async def handle_exception(self, error: Exception) -> str:
        status = await super().handle_exception(error)
        self.reply_logged()  # SessionHandler.handle_exception logged it
        return status

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_greeting_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_greeting_reply = False

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd resets its idle timer per command, not per line of data: give the
        # whole transfer (and our reply) its own, longer bound.
        self._reset_timeout(self.config.limits.data_timeout)
        await super().smtp_DATA(arg)
        self._reset_timeout()
        session = self.session
        envelope = self.envelope
        if (
            isinstance(session, ArproxySession)
            and session.transaction is not None
            and envelope is not None
            and envelope.mail_from is None
        ):
            # aiosmtpd refused the data itself (552 too much, 500 line too long) and
            # reset the envelope without calling our hook: end our side too.
            transaction, session.transaction = session.transaction, None
            transaction.close_later()

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._parameters_of = "MAIL"
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._parameters_of = "RCPT"
        await super().smtp_RCPT(arg)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        """aiosmtpd's parameter reader, replaced by the RFC 5321 grammar and our offer.

        aiosmtpd answers None with 501, pops the parameters it knows (SIZE, BODY,
        SMTPUTF8) from the dict to check their values, and answers 555 to any left.
        So: AUTH= (which it does not know) is taken here when AUTH is offered, and a
        parameter of an extension we did not offer is handed back under a key aiosmtpd
        cannot pop, which gets it the 555 of RFC 5321 section 4.1.1.11.
        """
        verb = self._parameters_of
        session = self.session
        offered = session.offered if isinstance(session, ArproxySession) else frozenset()
        if session is not None and session.authenticated:
            offered = offered | {extensions.AUTH}
        try:
            screened = extensions.screen_parameters(
                verb, extensions.parse_parameters(params), offered
            )
        except extensions.ParameterSyntaxError as exc:
            log.info("client=%s %s parameters refused (501): %s", self.client_text, verb, exc)
            self.reply_logged()
            return None
        if screened.not_offered:
            log.info(
                "client=%s %s parameter %s not offered: refused (555)",
                self.client_text,
                verb,
                printable(" ".join(str(p) for p in screened.not_offered)),
            )
            self.reply_logged()
        result: dict[str, str | bool] = {
            p.keyword: True if p.value is None else p.value
            for p in screened.accepted
            if p.keyword != extensions.AUTH  # taken here: we do not pass it on
        }
        result.update({f"-{p.keyword}": True for p in screened.not_offered})
        return result

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_greeting_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_greeting_reply = False

    async def push(self, status: AnyStr) -> None:
        """Every reply goes out here: our hooks' and aiosmtpd's own. Each refusal gets
        its log line (hooks whose decision was logged say so with reply_logged)."""
        if isinstance(status, str):
            if not self._in_greeting_reply:
                status = _with_enhanced_code(status)
            self._log_reply(status)
        await super().push(status)
        if self._close_after_reply and self.transport is not None:
            self.transport.close()

    def _log_reply(self, status: str) -> None:
        """Refusals at info (one line each), every other reply at debug."""
        logged, self._reply_logged = self._reply_logged, False
        refusal = status[:1] in ("4", "5")
        if logged or not (refusal or log.isEnabledFor(logging.DEBUG)):
            return
        log.log(
            logging.INFO if refusal else logging.DEBUG,
            "%s reply %r",
            self.log_prefix,
            status.replace("\r\n", " / "),
        )


def _with_enhanced_code(status: str) -> str:
    if _HAS_ENHANCED.match(status) or len(status) < 4 or not status[:3].isdigit():
        return status
    enhanced = _ENHANCED_BY_CODE.get(int(status[:3]))
    if enhanced is None:
        return status  # 220, 235, 334, 354: no enhanced code belongs there
    return f"{status[:4]}{enhanced} {status[4:]}"


def authserv_capability(config: Config, *, authenticated: bool) -> str | None:
    """The EHLO keyword line promising that we strip forged fields (draft section 3).

    "after-auth" shows the keyword without its id until the client has
    authenticated, as the draft does for IMAP's AUTHSERV / AUTHSERV=<id>.
    """
    server = config.server
    if server.advertise_authserv == "never":
        return None
    if server.advertise_authserv == "after-auth" and not authenticated:
        return "AUTHSERV"
    separator = "=" if server.authserv_form == "equals" else " "
    return f"AUTHSERV{separator}{server.authserv_id}"


class SessionHandler:
    """aiosmtpd's handler: one hook per SMTP command, delegating to the pipeline."""

    def __init__(
        self,
        pipeline: Pipeline,
        authenticator: Authenticator | None = None,
        tls: ReloadableContext | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.authenticator = authenticator
        self.tls = tls

    async def handle_PROXY(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope, proxy_data: Any
    ) -> bool:
        """The PROXY header (v1 or v2) from a trusted load balancer: the real client."""
        source = getattr(proxy_data, "src_addr", None)
        if source is None:
            # PROXY v2 LOCAL (the balancer's own health check) or UNKNOWN: the
            # connection is the proxy's own; it is served as coming from the proxy.
            return server.admit_client(_client_ip(session))
        try:
            client_ip = str(ipaddress.ip_address(source))
        except ValueError:
            log.warning(
                "PROXY header from %s with unusable source %r: closing", server.peer_text, source
            )
            return False
        return server.admit_client(client_ip)

    async def handle_AUTH(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope, args: list[str]
    ) -> object:
        if session.transaction is not None:
            return str(AUTH_IN_TRANSACTION)  # RFC 4954 section 4
        return MISSING  # aiosmtpd goes on with the mechanism

    async def handle_EHLO(
        self,
        server: ArproxySMTP,
        session: ArproxySession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        await self._abandon(session)  # aiosmtpd has reset the envelope already
        if not helo_acceptable(hostname):
            log.info("client=%s invalid EHLO %s: refused", server.client_text, printable(hostname))
            server.reply_logged()
            return [str(INVALID_HELO)]
        session.host_name = hostname  # aiosmtpd leaves this to a hook that exists
        _checks(session).on_helo(hostname)
        extra = ["250-ENHANCEDSTATUSCODES", "250-PIPELINING"]
        capability = authserv_capability(self.config, authenticated=bool(session.authenticated))
        if capability is not None:
            extra.append(f"250-{capability}")
        if self.authenticator is None or session.authenticated:
            # No users file: aiosmtpd would still list an empty "AUTH" keyword.
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        reply = [*responses[:-1], *extra, responses[-1]]
        session.offered = extensions.offered_keywords(reply)  # what MAIL may use
        return reply

    async def handle_HELO(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope, hostname: str
    ) -> str:
        await self._abandon(session)
        if not helo_acceptable(hostname):
            log.info("client=%s invalid HELO %s: refused", server.client_text, printable(hostname))
            server.reply_logged()
            return str(INVALID_HELO)
        session.host_name = hostname
        _checks(session).on_helo(hostname)
        return f"250 {self.config.server.hostname}"

    async def handle_MAIL(
        self,
        server: ArproxySMTP,
        session: ArproxySession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        await self._abandon(session)
        if server.registry.draining:
            # Postfix's behaviour on stop: no new transaction, and the session ends
            # with this reply (RFC 5321 section 3.8: 421, then close).
            server.close_after_reply()
            return str(SHUTTING_DOWN)
        refusal = extensions.address_refusal(
            address, smtputf8=bool(envelope.smtp_utf8), sender=True
        )
        if refusal is not None:
            log.info(
                "client=%s from=<%s> refused: %s", server.client_text, printable(address), refusal
            )
            server.reply_logged()
            return str(refusal)
        session.transaction = self.pipeline.begin(
            _client_info(server, session), _checks(session), address, mail_options
        )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(SENDER_OK)

    async def handle_RCPT(
        self,
        server: ArproxySMTP,
        session: ArproxySession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        transaction = session.transaction
        assert transaction is not None, "aiosmtpd refuses RCPT before MAIL"
        if len(transaction.recipients) >= self.config.limits.max_recipients:
            return str(Reply.of(452, "4.5.3", "Too many recipients"))
        refusal = extensions.address_refusal(address, smtputf8=transaction.smtputf8, sender=False)
        if refusal is not None:
            log.info(
                "id=%s client=%s to=<%s> refused: %s",
                transaction.queue_id,
                server.client_text,
                printable(address),
                refusal,
            )
            server.reply_logged()
            return str(refusal)
        reply = await transaction.add_recipient(address)
        if reply.is_success:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        else:
            server.reply_logged()  # the transaction logged why
        return str(reply)

    async def handle_DATA(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope
    ) -> str:
        transaction = session.transaction
        assert transaction is not None, "aiosmtpd refuses DATA before RCPT"
        content = envelope.content
        assert isinstance(content, bytes), "decode_data is off"
        try:
            if has_line_over(content, self.config.limits.max_line_length):
                # aiosmtpd's own bound counts a transparency dot on every line
                # (one octet of slack); the limit is on the text (RFC 5321 4.5.3.1.6).
                reply = LINE_TOO_LONG_IN_DATA
                log.info("%s reject: %s (over limits.max_line_length)", server.log_prefix, reply)
            else:
                reply = await transaction.deliver(content)
        except Exception as error:  # a bug of ours must not cost the mail
            # Answered here rather than in handle_exception, so aiosmtpd still resets
            # the transaction state and the session stays usable.
            log.error("internal error in DATA: %s", error, exc_info=error)
            reply = LOCAL_ERROR
        finally:
            transaction.close_later()
            # Cleared only now and with no await before the reply is pushed, so a
            # draining shutdown never takes this session for idle mid-delivery.
            session.transaction = None
        # deliver() logged the outcome (or the error above). When draining, the
        # session is idle from here: the drain closes it, or its next MAIL gets 421.
        server.reply_logged()
        return str(reply)

    async def handle_RSET(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope
    ) -> str:
        await self._abandon(session)
        return "250 2.0.0 OK"

    async def handle_QUIT(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope
    ) -> str:
        await self._abandon(session)
        server.quitting = True
        return f"221 2.0.0 {self.config.server.hostname} closing connection"

    async def handle_exception(self, error: Exception) -> str:
        if _is_line_overflow(error):
            # An over-long line inside an AUTH exchange: the client's fault, one line.
            log.info("line too long from client: %s", error)
            return str(LINE_TOO_LONG)
        if isinstance(error, TLSSetupException):
            # A client's failed handshake (old protocol, bad hello) is its problem:
            # one line, and aiosmtpd closes the connection.
            log.info("TLS handshake failed: %s", error.__cause__ or error)
            return str(TLS_FAILED)
        # A bug of ours, not the client's fault: log it whole, and have the client
        # keep the message and retry rather than see a Python error message.
        log.error("internal error: %s", error, exc_info=error)
        return str(LOCAL_ERROR)

    async def _abandon(self, session: ArproxySession) -> None:
        transaction, session.transaction = session.transaction, None
        if session.checks is not None:
            session.checks.reset_transaction()
        if transaction is not None:
            await transaction.close()


def has_line_over(content: bytes, limit: int) -> bool:
    """Whether a line of `content` holds more than `limit` octets. A bare CR or LF
    also ends a line here: the intake refuses it, or makes it CRLF (bare_newline)."""
    return max(map(len, content.splitlines()), default=0) > limit  # CRLF, CR, LF


def _is_line_overflow(error: Exception) -> bool:
    # asyncio's StreamReader.readline() turns its LimitOverrunError into a ValueError
    # saying "...chunk exceed the limit" or "...chunk is longer than limit";
    # aiosmtpd's AUTH challenge reads lines with it.
    return isinstance(error, asyncio.LimitOverrunError) or (
        isinstance(error, ValueError) and "limit" in str(error) and "chunk" in str(error)
    )


def helo_acceptable(hostname: str) -> bool:
    """Refuse what no HELO name can be: controls, white space, over 255 octets.

    Anything else printable is taken (real clients send odd names) and judged by
    SPF's HELO check; our Received line writes it only when it is a valid domain.
    Non-ASCII is refused: with SMTPUTF8 offered aiosmtpd decodes commands as UTF-8,
    but SMTPUTF8 is asked for on MAIL (RFC 6531 section 3.4), after EHLO, whose
    domain stays ASCII (RFC 5321 section 4.1.1.1).
    """
    return 0 < len(hostname) <= 255 and hostname.isascii() and not _HELO_FORBIDDEN.search(hostname)


def _in_networks(ip: str, networks: Sequence[IPNetwork]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in network for network in networks)


def _checks(session: ArproxySession) -> SessionChecks:
    assert session.checks is not None, "set when the connection was made"
    return session.checks


def _client_ip(session: ArproxySession) -> str:
    if session.client_ip is not None:
        return session.client_ip
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else "0.0.0.0"


def _client_info(server: ArproxySMTP, session: ArproxySession) -> ClientInfo:
    peer = session.peer
    port = int(peer[1]) if isinstance(peer, tuple) else 0
    return ClientInfo(
        ip=_client_ip(session),
        port=port,
        helo=session.host_name,
        esmtp=bool(session.extended_smtp),
        tls=session.ssl is not None,
        auth_identity=session.auth_identity,
    )


def make_protocol_factory(
    config: Config, handler: SessionHandler, registry: SessionRegistry, *, implicit_tls: bool
) -> Any:
    def factory() -> ArproxySMTP:
        # A new connection gets the current TLS context: a SIGHUP reload takes
        # effect for the next client without disturbing open sessions.
        starttls = handler.tls.current if handler.tls is not None and not implicit_tls else None
        return ArproxySMTP(
            handler,
            registry,
            hostname=config.server.hostname,
            ident=IDENT,
            data_size_limit=config.limits.max_message_size,
            decode_data=False,
            enable_SMTPUTF8=True,  # RFC 6531; refused at RCPT if the downstream lacks it
            timeout=config.limits.command_timeout,
            tls_context=starttls,
            # On the implicit-TLS listener the whole connection is encrypted, though
            # aiosmtpd (which only knows STARTTLS) cannot tell.
            auth_require_tls=not (config.auth.allow_plaintext or implicit_tls),
            auth_exclude_mechanism=None if handler.authenticator else ["PLAIN", "LOGIN"],
            proxy_protocol_timeout=PROXY_HEADER_TIMEOUT if config.server.proxy_protocol else None,
            command_call_limit=COMMAND_CALL_LIMITS,
        )

    return factory
