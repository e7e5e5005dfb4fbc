"""The SMTP listener: aiosmtpd glue and nothing else.

`SessionHandler` turns aiosmtpd's hooks into calls on the connection's
`pipeline.Session` (one per SMTP event) and the `Reply` values it returns into reply
lines. `ArproxySMTP` adds what aiosmtpd lacks: a log line for each refusal, the
pipeline session cleaned up when a client simply disconnects, admission and drain
(`arproxy.admission`). aiosmtpd's private hooks are reached only through
`arproxy.smtpd`. Nothing here imports a check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any, NoReturn

from aiosmtpd.smtp import MISSING, AuthResult, Envelope, LoginPassword, Session, TLSSetupException

from arproxy import extensions, logcontext
from arproxy.admission import SessionRegistry
from arproxy.config import Config
from arproxy.envelope import path_refusal
from arproxy.outcome import loggable_command, printable
from arproxy.pipeline import Pipeline
from arproxy.pipeline import Session as PipelineSession
from arproxy.replies import (
    AUTH_IN_TRANSACTION,
    LINE_TOO_LONG,
    LOCAL_ERROR,
    OK,
    SHUTTING_DOWN,
    TLS_FAILED,
    TOO_MANY_FROM_CLIENT,
    Reply,
    bare_newline_refusal,
    closing,
    greeting_ok,
    timeout_exceeded,
)
from arproxy.smtpauth import Authenticator
from arproxy.smtpd import SMTPAdapter
from arproxy.tls import ReloadableContext

__all__ = [
    "ArproxySMTP",
    "ArproxySession",
    "SessionHandler",
    "SessionRegistry",
    "authserv_capability",
    "make_protocol_factory",
]

# Per session: a client re-sending EHLO (each starts an SPF check) or anything else
# without end is cut off with aiosmtpd's "421 4.7.0 <cmd> sent too many times".
COMMAND_CALL_LIMITS = {"EHLO": 50, "HELO": 50, "*": 5000}
PROXY_HEADER_TIMEOUT = 5.0  # seconds a trusted proxy has to send the PROXY header

log = logging.getLogger("arproxy.server")

IDENT = "ESMTP arproxy"


class ArproxySession(Session):
    """aiosmtpd's session plus the pipeline's session for this connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.state: PipelineSession | None = None  # once the client's address is known
        self.offered: frozenset[str] = frozenset()  # keywords of our last EHLO reply


class ArproxySMTP(SMTPAdapter):
    def __init__(self, handler: SessionHandler, registry: SessionRegistry, **kwargs: Any) -> None:
        super().__init__(handler, max_line_length=handler.config.limits.max_line_length, **kwargs)
        self.pipeline = handler.pipeline
        self.config = handler.config
        self.registry = registry
        self._refused = False
        self._opened = False  # aiosmtpd has the connection (after admission)
        self._admitting: asyncio.Task[None] | None = None
        self._lease: str | None = None  # this session's count in Redis (redisstate)
        # RFC 5321 section 2.3.8: command lines end in CRLF; "normalize" tolerates LF.
        self.reject_bare_newline = handler.config.limits.bare_newline == "reject"
        self.quitting = False  # answered 221: over for the client
        self._reply_logged = False  # the next reply's decision was logged already
        self._close_after_reply = False

    def new_session(self) -> ArproxySession:
        return ArproxySession(self.loop)

    @property
    def state(self) -> PipelineSession | None:
        """The pipeline's session, once the client's address is known."""
        session = self.session
        return session.state if isinstance(session, ArproxySession) else None

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
        state = self.state
        return state is None or state.transaction is None

    @property
    def client_text(self) -> str:
        state = self.state
        return state.facts.ip if state is not None else self.peer_text

    @property
    def log_prefix(self) -> str:
        """`id=QUEUEID client=IP` within a transaction, `client=IP` outside one."""
        state = self.state
        return state.log_prefix if state is not None else f"client={self.client_text}"

    # --- the connection ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # after STARTTLS: a new transport, same client
            before = self.session
            super().connection_made(transport)  # aiosmtpd starts a new session here
            self._carry_over(before)
            return
        peer = transport.get_extra_info("peername")
        peer_ip = str(peer[0]) if isinstance(peer, tuple) else "0.0.0.0"
        refusal = self.registry.refusal_for(peer_ip, self.config)
        if refusal is not None:
            self._refuse(transport, peer_ip, refusal)
            return
        if self.registry.remote is not None and not self.config.server.proxy_protocol:
            # The count across instances is a Redis round trip: the banner waits for it.
            self._admitting = self.loop.create_task(self._admit_remote(transport, peer_ip))
            return
        self._open(transport, peer_ip)

    def _refuse(self, transport: asyncio.BaseTransport, peer_ip: str, refusal: Reply) -> None:
        """Refused before aiosmtpd sees the connection: no session, no banner."""
        self._refused = True
        log.warning(
            "connect from %s refused: %s", peer_ip, refusal if refusal.code else refusal.text
        )
        if isinstance(transport, asyncio.WriteTransport) and refusal.code != 0:
            transport.write(str(refusal).encode("ascii") + b"\r\n")
        transport.close()

    async def _admit_remote(self, transport: asyncio.BaseTransport, peer_ip: str) -> None:
        admit, self._lease = await self.registry.reserve_remote(peer_ip, self.config)
        if transport.is_closing():  # the client left while we asked
            self.registry.release(self._lease)
            self._lease = None
        elif not admit:
            self._refuse(transport, peer_ip, TOO_MANY_FROM_CLIENT)
        else:
            self._open(transport, peer_ip)

    def _open(self, transport: asyncio.BaseTransport, peer_ip: str) -> None:
        self._opened = True
        super().connection_made(transport)
        self.registry.open.opened(self)  # under its client once admit_client knows it
        task = self.session_task
        assert task is not None
        task.add_done_callback(self._session_task_done)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and self.session is not None:
            self.session.ssl = ssl_object  # implicit TLS: encrypted from the first byte
        if not self.config.server.proxy_protocol:
            # refusal_for counted this client a moment ago, in this same call.
            self.admit_client(peer_ip, counted=True)

    def _carry_over(self, before: Session | None) -> None:
        """Keep the connection's pipeline session across STARTTLS (aiosmtpd starts a
        new session object); the pipeline session resets what RFC 3207 4.2 resets."""
        after = self.session
        if not isinstance(before, ArproxySession) or not isinstance(after, ArproxySession):
            return
        after.state = before.state
        if after.state is not None:
            after.state.starttls()

    async def admit_proxied_client(self, client_ip: str) -> bool:
        """admit_client for the address a PROXY header gave, counting it across
        instances first when the counts are in Redis."""
        if self.registry.remote is not None:
            admit, self._lease = await self.registry.reserve_remote(client_ip, self.config)
            if not admit:
                log.warning("client %s over max_connections_per_ip: closing", client_ip)
                self.close_with(TOO_MANY_FROM_CLIENT, logged=True)
                return False
        return self.admit_client(client_ip)

    def admit_client(self, client_ip: str, *, counted: bool = False) -> bool:
        """The client's address is known (PROXY header or socket): open its session.
        `counted`: `registry.refusal_for` has just checked the client's count (and
        with several workers reserved its place), nothing ran in between."""
        assert isinstance(self.session, ArproxySession)
        log.info(
            "connect from %s%s",
            client_ip,
            f" via proxy {self.peer_text}" if self.config.server.proxy_protocol else "",
        )
        if not counted and self.registry.client_is_full(client_ip, self.config):
            log.warning("client %s over max_connections_per_ip: closing", client_ip)
            self.close_with(TOO_MANY_FROM_CLIENT, logged=True)
            return False
        peer = self.session.peer
        port = int(peer[1]) if isinstance(peer, tuple) else 0
        tls = self.session.ssl is not None
        self.session.state = self.pipeline.open_session(client_ip, port, tls=tls)
        self.registry.open.client_known(self)  # client_text is the client's address now
        return True

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # never reached aiosmtpd, nothing to clean up
        if not self._opened:  # left while admission asked Redis: _admit_remote
            return  # sees the closed transport and gives the lease back
        self.registry.release(self._lease)
        self._lease = None
        self.registry.open.discard(self)
        state = self.state
        client = self.client_text
        super().connection_lost(error)
        if state is not None:
            state.close()
        log.info("disconnect from %s", client)

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

    def eof_received(self) -> bool | None:
        log.debug("client=%s closed its sending side", self.client_text)
        return super().eof_received()

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
            # Never an AUTH credential in a log (RFC 4954 section 4): masked.
            loggable_command(line[:80], auth_data=self.reading_auth_data),
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
            self.flush_replies()
            transport.close()
        await self.loop.create_future()
        raise ConnectionResetError("connection closed")  # not reached: cancelled first

    # --- replies ---

    def reply_logged(self) -> None:
        """The decision behind the next reply has its log line: do not log it twice."""
        self._reply_logged = True

    def close_after_reply(self) -> None:
        """Close once the next reply is written."""
        self._close_after_reply = True

    def log_reply(self, status: str) -> None:
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

    def closes_after(self, response: bytes) -> bool:
        return self._close_after_reply or super().closes_after(response)

    def before_last_reply(self) -> None:
        self.session_over()

    def session_over(self) -> asyncio.Task[None] | None:
        """The session's last reply (221, a closing 421 or 550) is about to go out: from
        now on it no longer counts against its client's limits.max_connections_per_ip,
        in every worker, before the client can read the reply and connect again
        (README, limits.max_connections_per_ip). connection_lost comes later, when
        the close is done: the count it published was too late, and a client's next
        session landing on another worker was refused 421 4.7.0. With the counts in
        Redis, the lease's release (the task returned; None if nothing to wait for)."""
        if self.quitting:
            return None
        self.quitting = True
        self.registry.session_over(self)
        lease, self._lease = self._lease, None
        return self.registry.release(lease)

    def after_reply(self) -> None:
        if self._close_after_reply and self.transport is not None:
            self.flush_replies()
            self.transport.close()

    def on_idle_timeout(self) -> None:
        # aiosmtpd closes an idle connection without a word; RFC 5321 4.1.1.x wants 421.
        self.close_with(timeout_exceeded(self.config.server.hostname))

    def close_with(self, reply: Reply, *, logged: bool = False) -> None:
        """Send `reply` (a 421, RFC 5321 section 3.8) and close, whatever the session
        is doing; logged here unless the caller logged it."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            if not logged:
                log.info("%s reply %r, closing", self.log_prefix, str(reply))
            self.flush_replies()  # the replies owed before this one
            self.session_over()
            transport.write(str(reply).encode("ascii") + b"\r\n")
            transport.close()

    async def handle_exception(self, error: Exception) -> str:
        status = await super().handle_exception(error)
        self.reply_logged()  # SessionHandler.handle_exception logged it
        return status

    # --- SMTP AUTH: aiosmtpd parses PLAIN and LOGIN, our Authenticator decides ---

    async def decide_auth(self, parsed: AuthResult) -> AuthResult:
        authenticator = self.event_handler.authenticator
        state = self.state
        if authenticator is None or state is None:
            return parsed
        credentials = parsed.auth_data
        assert isinstance(credentials, LoginPassword)
        outcome = await authenticator.authenticate(
            self.client_text, credentials.login, credentials.password
        )
        if outcome.identity is not None:
            state.authenticated(outcome.identity)
            return AuthResult(success=True, message=str(outcome.reply), auth_data=outcome.identity)
        state.auth_failed(outcome.attempted)
        self.reply_logged()  # the authenticator logged the failure
        if outcome.disconnect:
            self.close_with(outcome.reply, logged=True)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=str(outcome.reply))

    # --- commands whose handling aiosmtpd does not hand to a hook ---

    async def smtp_STARTTLS(self, arg: str) -> None:
        await super().smtp_STARTTLS(arg)
        if self.is_idle:
            # The TLS layer restarted the session (connection_made, outside this
            # task): the task's log lines no longer belong to a transaction.
            logcontext.set_queue_id(None)

    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd resets its idle timer per command, not per line of data: give the
        # whole transfer (and our reply) its own, longer bound.
        self.set_timeout(self.config.limits.data_timeout)
        await super().smtp_DATA(arg)
        self.set_timeout()
        state = self.state
        envelope = self.envelope
        if (
            state is not None
            and state.transaction is not None
            and envelope is not None
            and envelope.mail_from is None
        ):
            # aiosmtpd refused the data itself (552 too much, 500 line too long) and
            # reset the envelope without calling our hook: end our side too.
            state.abandon()

    def screen_path(self, verb: str, arg: str | None) -> str | None:
        """RFC 5321 section 4.1.2's path syntax (arproxy.envelope), one log line."""
        refusal = path_refusal(verb, arg or "")
        if refusal is None:
            return None
        log.info("%s %s %s refused: %s", self.log_prefix, verb, printable(arg or ""), refusal)
        self.reply_logged()
        return str(refusal)

    def screen_parameters(self, verb: str, params: Sequence[str]) -> dict[str, str | bool] | None:
        """aiosmtpd's parameter reader, replaced by the RFC 5321 grammar and our offer.

        aiosmtpd answers None with 501, pops the parameters it knows (SIZE, BODY,
        SMTPUTF8) from the dict to check their values, and answers 555 to any left.
        So: AUTH= (which it does not know) is taken here when AUTH is offered, and a
        parameter of an extension we did not offer is handed back under a key aiosmtpd
        cannot pop, which gets it the 555 of RFC 5321 section 4.1.1.11.
        """
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
    """aiosmtpd's handler: one hook per SMTP command, each a call on the pipeline's
    session and its `Reply` written back. The session logs the refusals it decides."""

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
            peer = session.peer
            peer_ip = str(peer[0]) if isinstance(peer, tuple) else "0.0.0.0"
            return await server.admit_proxied_client(peer_ip)
        try:
            client_ip = str(ipaddress.ip_address(source))
        except ValueError:
            log.warning(
                "PROXY header from %s with unusable source %r: closing", server.peer_text, source
            )
            return False
        return await server.admit_proxied_client(client_ip)

    async def handle_AUTH(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope, args: list[str]
    ) -> object:
        if _state(session).transaction is not None:
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
        refusal = await self._greet(server, session, hostname, esmtp=True)
        if refusal is not None:
            return [refusal]
        extra = ["250-ENHANCEDSTATUSCODES", "250-PIPELINING"]
        capability = authserv_capability(server.config, authenticated=bool(session.authenticated))
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
        refusal = await self._greet(server, session, hostname, esmtp=False)
        return refusal or str(greeting_ok(server.config.server.hostname))

    async def _greet(
        self, server: ArproxySMTP, session: ArproxySession, hostname: str, *, esmtp: bool
    ) -> str | None:
        """EHLO and HELO alike: the refusal to write, or None (aiosmtpd has reset the
        envelope already)."""
        refusal = await _state(session).helo(hostname, esmtp=esmtp)
        if refusal is None:
            session.host_name = hostname  # aiosmtpd leaves this to a hook that exists
            return None
        server.reply_logged()
        return str(refusal)

    async def handle_MAIL(
        self,
        server: ArproxySMTP,
        session: ArproxySession,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        state = _state(session)
        if server.registry.draining:
            # Postfix's behaviour on stop: no new transaction, and the session ends
            # with this reply (RFC 5321 section 3.8: 421, then close).
            await state.reset()
            server.close_after_reply()
            return str(SHUTTING_DOWN)
        # The parameters as the client wrote them: aiosmtpd upper-cases their values,
        # which are case-sensitive (ENVID, ORCPT and AUTH= xtext, RFC 3461 and 4954).
        if [p.upper() for p in server.command_parameters] == mail_options:
            mail_options = list(server.command_parameters)
        reply = await state.mail(address, mail_options)
        if not reply.is_success:
            server.reply_logged()
            return str(reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(reply)

    async def handle_RCPT(
        self,
        server: ArproxySMTP,
        session: ArproxySession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        outcome = await _state(session).rcpt(address)
        if outcome.reply.is_success:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        else:
            server.reply_logged()
        return str(outcome.reply)

    async def handle_DATA(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope
    ) -> str:
        content = envelope.content
        assert isinstance(content, bytes), "decode_data is off"
        outcome = await _state(session).data(content)
        # Logged by the session. When draining, the session is idle from here: the
        # drain closes it, or its next MAIL gets 421.
        server.reply_logged()
        return str(outcome.reply)

    async def handle_RSET(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope
    ) -> str:
        await _state(session).reset()
        return str(OK)

    async def handle_QUIT(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope
    ) -> str:
        if session.state is not None:
            await session.state.reset()
        releasing = server.session_over()
        if releasing is not None:
            # Across instances (Redis): the place is free before the client reads 221
            # and connects again, to this instance or another.
            await asyncio.shield(releasing)
        return str(closing(server.config.server.hostname))

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


def _is_line_overflow(error: Exception) -> bool:
    # asyncio's StreamReader.readline() turns its LimitOverrunError into a ValueError
    # saying "...chunk exceed the limit" or "...chunk is longer than limit";
    # aiosmtpd's AUTH challenge reads lines with it.
    return isinstance(error, asyncio.LimitOverrunError) or (
        isinstance(error, ValueError) and "limit" in str(error) and "chunk" in str(error)
    )


def _state(session: ArproxySession) -> PipelineSession:
    assert session.state is not None, "opened when the client's address became known"
    return session.state


def make_protocol_factory(
    handler: SessionHandler,
    registry: SessionRegistry,
    *,
    implicit_tls: bool,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Any:
    """A protocol factory for the listener on `loop` (given, aiosmtpd does not look
    it up per connection: its look-up sets and restores a warnings filter, ~0.1 s per
    1000 connections)."""

    def factory() -> ArproxySMTP:
        # A new connection gets the current configuration and TLS context: a SIGHUP
        # reload takes effect for the next client without disturbing open sessions.
        config = handler.config
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
            loop=loop,
        )

    return factory
