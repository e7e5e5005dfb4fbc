"""The SMTP listener: aiosmtpd glue and nothing else.

`SessionHandler` turns aiosmtpd's hooks into calls on the pipeline and the
pipeline's `Reply` values back into reply lines. `ArproxySMTP` adds what aiosmtpd
lacks: enhanced status codes on its own replies, per-session state that is cleaned
up when a client simply disconnects, and a registry so that SIGTERM can drain.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session

from arproxy.config import Config
from arproxy.pipeline import ClientInfo, Pipeline, Transaction
from arproxy.replies import LOCAL_ERROR, SENDER_OK, SHUTTING_DOWN, Reply

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
    """aiosmtpd's session plus the mail transaction in progress, if any."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.transaction: Transaction | None = None


class SessionRegistry:
    """The open sessions of one listener, so that shutdown can drain them."""

    def __init__(self) -> None:
        self.open: set[ArproxySMTP] = set()
        self.draining = False

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
        super().__init__(handler, **kwargs)
        self.registry = registry
        self._in_greeting_reply = False

    def _create_session(self) -> ArproxySession:
        return ArproxySession(self.loop)

    @property
    def peer_text(self) -> str:
        peer = getattr(self.session, "peer", None)
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unknown"

    @property
    def is_idle(self) -> bool:
        session = self.session
        return not isinstance(session, ArproxySession) or session.transaction is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first_time = self.transport is None
        super().connection_made(transport)
        if first_time:  # STARTTLS calls this again for the same session
            self.registry.open.add(self)
            log.info("connect from %s", self.peer_text)

    def connection_lost(self, error: Exception | None) -> None:
        self.registry.open.discard(self)
        session = self.session
        super().connection_lost(error)
        if isinstance(session, ArproxySession) and session.transaction is not None:
            # No hook runs when a client just disconnects: abandon the downstream
            # transaction here, or its connection would linger until it times out.
            transaction, session.transaction = session.transaction, None
            self.loop.create_task(transaction.close())
        log.info("disconnect from %s", self.peer_text)

    def close_with(self, reply: Reply) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(str(reply).encode("ascii") + b"\r\n")
            transport.close()

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_greeting_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_greeting_reply = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_greeting_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_greeting_reply = False

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and not self._in_greeting_reply:
            await super().push(_with_enhanced_code(status))
        else:
            await super().push(status)


def _with_enhanced_code(status: str) -> str:
    if _HAS_ENHANCED.match(status) or len(status) < 4 or not status[:3].isdigit():
        return status
    enhanced = _ENHANCED_BY_CODE.get(int(status[:3]))
    if enhanced is None:
        return status  # 220, 235, 334, 354: no enhanced code belongs there
    return f"{status[:4]}{enhanced} {status[4:]}"


def authserv_capability(config: Config) -> str | None:
    """The EHLO keyword line promising that we strip forged fields (draft section 3)."""
    server = config.server
    if server.advertise_authserv == "never":
        return None
    separator = "=" if server.authserv_form == "equals" else " "
    return f"AUTHSERV{separator}{server.authserv_id}"


class SessionHandler:
    """aiosmtpd's handler: one hook per SMTP command, delegating to the pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config

    async def handle_EHLO(
        self,
        server: ArproxySMTP,
        session: ArproxySession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        await self._abandon(session)
        session.host_name = hostname  # aiosmtpd leaves this to a hook that exists
        extra = ["250-ENHANCEDSTATUSCODES", "250-PIPELINING"]
        capability = authserv_capability(self.config)
        if capability is not None:
            extra.append(f"250-{capability}")
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_HELO(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope, hostname: str
    ) -> str:
        await self._abandon(session)
        session.host_name = hostname
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
        session.transaction = self.pipeline.begin(
            _client_info(server, session), address, mail_options
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
        reply = await transaction.add_recipient(address)
        if reply.is_success:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return str(reply)

    async def handle_DATA(
        self, server: ArproxySMTP, session: ArproxySession, envelope: Envelope
    ) -> str:
        transaction = session.transaction
        assert transaction is not None, "aiosmtpd refuses DATA before RCPT"
        content = envelope.content
        assert isinstance(content, bytes), "decode_data is off"
        try:
            reply = await transaction.deliver(content)
        finally:
            await transaction.close()
            # Cleared only now and with no await before the reply is pushed, so a
            # draining shutdown never takes this session for idle mid-delivery.
            session.transaction = None
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
        return f"221 2.0.0 {self.config.server.hostname} closing connection"

    async def handle_exception(self, error: Exception) -> str:
        # A bug of ours, not the client's fault: log it whole, and have the client
        # keep the message and retry rather than see a Python error message.
        log.error("internal error: %s", error, exc_info=error)
        return str(LOCAL_ERROR)

    async def _abandon(self, session: ArproxySession) -> None:
        transaction, session.transaction = session.transaction, None
        if transaction is not None:
            await transaction.close()


def _client_info(server: ArproxySMTP, session: ArproxySession) -> ClientInfo:
    peer = session.peer
    ip, port = (peer[0], int(peer[1])) if isinstance(peer, tuple) else ("0.0.0.0", 0)
    return ClientInfo(
        ip=ip,
        port=port,
        helo=session.host_name,
        esmtp=bool(session.extended_smtp),
        tls=session.ssl is not None,
    )


def make_protocol_factory(config: Config, pipeline: Pipeline, registry: SessionRegistry) -> Any:
    handler = SessionHandler(pipeline)

    def factory() -> ArproxySMTP:
        return ArproxySMTP(
            handler,
            registry,
            hostname=config.server.hostname,
            ident=IDENT,
            data_size_limit=config.limits.max_message_size,
            decode_data=False,
            enable_SMTPUTF8=False,
            timeout=config.limits.command_timeout,
        )

    return factory


async def serve(
    config: Config, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    """Listen until `stop` is set (SIGTERM/SIGINT by default), then drain."""
    loop = asyncio.get_running_loop()
    pipeline = Pipeline(config)
    pipeline.relay.prepare()
    registry = SessionRegistry()
    listen = config.server.listen
    server = await loop.create_server(
        make_protocol_factory(config, pipeline, registry), host=listen.host, port=listen.port
    )
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    log.info(
        "arproxy listening on %s as %s, authserv-id %s, delivering to %s%s",
        listen,
        config.server.hostname,
        config.server.authserv_id,
        config.relay.downstream,
        " (no downstream configured: embedded Maildir)"
        if config.relay.downstream.scheme == "maildir"
        else "",
    )
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: no new connections, draining %d open session(s)", len(registry.open))
    server.close()
    await registry.drain(config.server.shutdown_grace)
    await server.wait_closed()
    log.info("stopped")
