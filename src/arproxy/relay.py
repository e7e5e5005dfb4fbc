"""Downstream delivery: hand a message on and report exactly what happened.

One `Delivery` is one mail transaction with the downstream. For SMTP and LMTP it is
live: MAIL is sent when the first recipient is accepted by our own policy, each RCPT
is forwarded as the client sends it (so per-recipient refusals reach the client
without arproxy ever generating a bounce), and the DATA reply is the downstream's.
Anything that goes wrong on the way becomes a 4xx reply so that the sender keeps the
message and retries: nothing is acknowledged that was not handed on.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from arproxy import extensions
from arproxy.config import Downstream, RelayConfig
from arproxy.replies import (
    DOWNSTREAM_TIMEOUT,
    DOWNSTREAM_UNAVAILABLE,
    LOCAL_ERROR,
    MAILBOX_UNAVAILABLE,
    RECIPIENT_OK,
    SENDER_OK,
    UNSENDABLE_ADDRESS,
    Reply,
    maildir_delivered,
)
from arproxy.smtpclient import (
    SERVICE_CLOSING,
    SmtpArgumentError,
    SmtpClient,
    SmtpProtocolError,
    command_line,
)

log = logging.getLogger("arproxy.relay")

CLOSE_TIMEOUT = 5.0  # seconds for each RSET/QUIT when a transaction ends

# The transaction's origin for XFORWARD (attribute -> value), set by the session at
# MAIL in its own context, read by SmtpRelay when it opens the downstream transaction.
_ORIGIN: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "arproxy_xforward_origin", default=None
)


def set_origin(*, addr: str, port: int, helo: str | None, esmtp: bool, queue_id: str) -> None:
    """What the downstream may log about this transaction's client (Postfix XFORWARD:
    ADDR, PORT, HELO, PROTO, and IDENT = our queue id, so its log joins ours)."""
    origin = {
        "NAME": "[UNAVAILABLE]",  # we verify names in iprev, after this point
        "ADDR": addr,
        "PORT": str(port),
        "PROTO": "ESMTP" if esmtp else "SMTP",
        "IDENT": queue_id,
        "SOURCE": "REMOTE",
    }
    if helo:
        origin["HELO"] = helo
    _ORIGIN.set(origin)


def xforward_commands(offered: str, origin: dict[str, str] | None) -> list[str]:
    """The XFORWARD `NAME=value` arguments for the attributes the downstream offered
    (its EHLO `XFORWARD NAME ADDR ...` line), values in xtext (RFC 3461 section 4)."""
    if origin is None:
        return []
    allowed = {name.upper() for name in offered.split()}
    return [f"{name}={xtext(value)}" for name, value in origin.items() if name in allowed]


XFORWARD_LINE_LIMIT = 512  # octets of a command line, CRLF included (RFC 5321 4.5.3.1.4)


def xforward_lines(arguments: Sequence[str]) -> list[list[str]]:
    """`arguments` grouped into as few XFORWARD commands as fit the command line limit
    (Postfix XFORWARD_README: `XFORWARD 1*( SP name=value )`, and no command over 512
    characters): one round trip each, instead of one per attribute. An argument that
    cannot fit a command of its own (a HELO name of 255 octets all escaped) is left out."""
    lines: list[list[str]] = []
    length = 0
    fixed = len("XFORWARD") + len("\r\n")
    for argument in arguments:
        size = 1 + len(argument)  # SP name=value
        if fixed + size > XFORWARD_LINE_LIMIT:
            log.info("XFORWARD %s... left out: over the command line limit", argument[:16])
            continue
        if not lines or fixed + length + size > XFORWARD_LINE_LIMIT:
            lines.append([])
            length = 0
        lines[-1].append(argument)
        length += size
    return lines


# RFC 3461 section 4's xchar: "!" to "~" but "+" and "=", which stand for themselves.
_XCHARS = re.compile(r"[!-*,-<>-~]*")


def xtext(value: str) -> str:
    """RFC 3461 section 4: "+", "=" and octets outside 33-126 as "+HH"."""
    if _XCHARS.fullmatch(value):
        return value  # nothing to escape (an address, a port, a queue id): one regex match
    return "".join(
        f"+{octet:02X}" if octet in (0x2B, 0x3D) or not 33 <= octet <= 126 else chr(octet)
        for octet in value.encode("utf-8")
    )


class Delivery(Protocol):
    """One mail transaction with the downstream."""

    async def add_recipient(self, recipient: str) -> Reply: ...

    async def send(self, message: bytes) -> Reply: ...

    async def close(self) -> None:
        """End the transaction; abandons it if `send` has not succeeded. Idempotent."""


@dataclass(frozen=True)
class Opened:
    """The outcome of starting a transaction: a delivery, or the reply refusing it."""

    delivery: Delivery | None
    reply: Reply


class Relay(Protocol):
    def prepare(self) -> None:
        """Called once at start-up, before the listener opens."""

    async def open(self, sender: str, mail_options: Sequence[str], recipient: str) -> Opened:
        """Start the downstream transaction for the first accepted `recipient`."""

    async def shutdown(self, timeout: float) -> None:
        """At stop, after the last transaction: close what is kept open between them,
        within `timeout` seconds."""


def make_relay(config: RelayConfig, helo_name: str) -> Relay:
    downstream = config.downstream
    if downstream.scheme == "maildir":
        assert downstream.maildir is not None
        return MaildirRelay(downstream.maildir)
    if downstream.scheme == "lmtp":
        return LmtpRelay(downstream, config, helo_name)
    return SmtpRelay(downstream, config, helo_name)


# --- SMTP and LMTP -----------------------------------------------------------


class SmtpRelay:
    """Live relay to an SMTP server over a small per-worker pool of open connections.

    After a transaction that ended cleanly (DATA answered, or RSET answered 250) the
    connection waits in the pool for the next one, at most `relay.pool_idle` seconds
    and `POOL_MAX_TRANSACTIONS` transactions (`relay.pool_size` 0: one connection per
    transaction). A pooled connection the downstream closed meanwhile (a 421 or EOF
    to XFORWARD or MAIL, RFC 5321 section 3.8) is dropped and the transaction starts
    again on a new connection: nothing of the message was sent at that point. Once
    MAIL is accepted nothing is retried, and the DATA reply is the downstream's.
    """

    def __init__(self, downstream: Downstream, config: RelayConfig, helo_name: str) -> None:
        assert downstream.address is not None
        self.downstream = downstream
        self.config = config
        self.helo_name = helo_name
        self._idle: list[_Pooled] = []  # most recently used last
        self._closing: set[asyncio.Task[None]] = set()
        self.connections_opened = 0  # for tests and the bench: new downstream connections

    def prepare(self) -> None:
        return None  # connections are opened on demand

    async def open(self, sender: str, mail_options: Sequence[str], recipient: str) -> Opened:
        while (pooled := self._checkout()) is not None:
            opened = await self._begin(pooled, sender, mail_options, recipient, reused=True)
            if opened is not None:
                return opened
            # The downstream closed it meanwhile: nothing was sent, try the next one.
        client = await self._connect()
        if isinstance(client, Reply):
            return Opened(None, client)
        opened = await self._begin(_Pooled(client), sender, mail_options, recipient, reused=False)
        assert opened is not None  # a new connection is never retried
        return opened

    async def _connect(self) -> SmtpClient | Reply:
        """A new connection, greeted and past EHLO; or the 4xx for our client.

        Plain TCP: the downstream sits on a trusted network next to us, and
        opportunistic TLS with an unverifiable certificate would only fail. A
        downstream that will not talk to us (no 220, EHLO refused) is a fault on our
        side of the border: the sender must keep the message (4xx), not bounce it.
        """
        address = self.downstream.address
        assert address is not None
        try:
            client, greeting = await SmtpClient.connect(
                address.host,
                address.port,
                connect_timeout=self.config.connect_timeout,
                timeout=self.config.timeout,
            )
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            return _failure(exc, str(self.downstream))
        try:
            if greeting.code != 220:
                raise SmtpProtocolError(f"greeting {greeting}")
            self.connections_opened += 1
            hello = await client.hello("EHLO", self.helo_name)
            if hello.code != 250:
                raise SmtpProtocolError(f"EHLO answered {hello}")
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            client.close()
            return _failure(exc, str(self.downstream))
        except BaseException:
            client.close()  # cancelled (client gone, shutdown): no connection may leak
            raise
        return client

    async def _begin(
        self,
        pooled: _Pooled,
        sender: str,
        mail_options: Sequence[str],
        recipient: str,
        *,
        reused: bool,
    ) -> Opened | None:
        """XFORWARD and MAIL on `pooled`; None when a `reused` connection turned out
        closed by the downstream (421 or EOF) before anything of this transaction
        was accepted, so that it starts again on another connection."""
        client = pooled.client
        try:
            plan, mail, first = await self._start(client, sender, mail_options, recipient)
        except SmtpArgumentError:
            client.close()  # a control character in the address (RFC 5321 4.1.2)
            return Opened(None, UNSENDABLE_ADDRESS)
        except ConnectionError as exc:
            if reused:
                _discard(client, "EOF", str(exc))
                return None
            client.close()
            return Opened(None, _failure(exc, str(self.downstream)))
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            client.close()
            return Opened(None, _failure(exc, str(self.downstream)))
        except BaseException:
            client.close()
            raise
        if mail is None:
            # Refused by us before MAIL: the downstream never saw this transaction,
            # and the connection is as clean as before it.
            # Not logged here: the pipeline's outcome line is the one line (RFC 6531).
            assert plan.refusal is not None
            self.release(pooled)
            return Opened(None, plan.refusal)
        if mail.code != 250:
            if reused and mail.code == SERVICE_CLOSING:
                _discard(client, "421", mail.text)
                return None
            client.close()
            return Opened(None, _refusal(mail, f"MAIL FROM:<{sender}>"))
        delivery = _SmtpDelivery(self, pooled, str(self.downstream), plan)
        if first is not None:
            delivery.first_recipient = (recipient, first)
        return Opened(delivery, mail)

    async def _start(
        self, client: SmtpClient, sender: str, mail_options: Sequence[str], recipient: str
    ) -> tuple[extensions.DownstreamPlan, Reply | None, Reply | None]:
        """The plan, MAIL's reply (or the 421 that ended the dialogue before it), and
        the reply to `recipient`'s RCPT when it went in the same group (a downstream
        offering PIPELINING); MAIL's reply is None when the plan refuses the
        transaction before MAIL."""
        offered = client.extensions
        plan = extensions.plan_downstream(sender, recipient, mail_options, offered.keys())
        if plan.refusal is not None:
            return plan, None, None
        # XFORWARD holds for one transaction (Postfix resets it at its end): sent
        # each time, also on a reused connection.
        forwarded = _xforward_arguments(offered.get("XFORWARD"))
        # aiosmtpd hands the null reverse-path over as "<>" (RFC 5321 4.1.1.2: MAIL FROM:<>).
        envelope_sender = "" if sender == "<>" else sender
        parameters = "".join(f" {option}" for option in plan.options)
        lines = [command_line("XFORWARD", " ".join(arguments)) for arguments in forwarded]
        lines.append(command_line("MAIL", f"FROM:<{envelope_sender}>{parameters}", _encoding(plan)))
        mail_at = len(lines) - 1
        rcpt = _pipelined_rcpt(client, recipient, plan)
        if rcpt is not None:
            lines.append(rcpt)
        replies = await _send_commands(client, lines)
        for arguments, reply in zip(forwarded, replies, strict=False):
            if reply.code != 250:
                # A refusal only costs the downstream's log that detail.
                log.info("downstream refused XFORWARD %s: %s", " ".join(arguments), reply.code)
                break
        if len(replies) <= mail_at:
            if replies[-1].code == SERVICE_CLOSING:
                return plan, replies[-1], None  # the 421 after which nothing more came
            raise ConnectionError("the downstream closed the connection before MAIL's reply")
        # A RCPT reply missing (the dialogue ended after MAIL's): add_recipient meets
        # the broken connection as any later command would.
        first = replies[mail_at + 1] if len(replies) > mail_at + 1 else None
        return plan, replies[mail_at], first

    # --- the pool ---

    def _checkout(self) -> _Pooled | None:
        """The most recently used idle connection still open, or None."""
        while self._idle:
            pooled = self._idle.pop()
            if pooled.expiry is not None:
                pooled.expiry.cancel()
                pooled.expiry = None
            if pooled.client.is_connected:
                return pooled
            pooled.client.close()  # the downstream closed it while idle
        return None

    def release(self, pooled: _Pooled) -> None:
        """A connection whose transaction ended cleanly (the downstream is between
        transactions, RFC 5321 section 4.1.1.4 or 4.1.1.5): pooled, or QUIT."""
        pooled.transactions += 1
        if (
            not pooled.client.is_connected
            or pooled.transactions >= POOL_MAX_TRANSACTIONS
            or len(self._idle) >= self.config.pool_size
        ):
            self._quit_later(pooled)
            return
        loop = asyncio.get_running_loop()
        pooled.expiry = loop.call_later(self.config.pool_idle, self._expire, pooled)
        self._idle.append(pooled)

    def _expire(self, pooled: _Pooled) -> None:
        pooled.expiry = None
        if pooled in self._idle:
            self._idle.remove(pooled)
            self._quit_later(pooled)

    def _quit_later(self, pooled: _Pooled) -> None:
        task = asyncio.get_running_loop().create_task(_quit(pooled.client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def shutdown(self, timeout: float) -> None:
        """QUIT every idle connection and wait for the QUITs under way, at most
        `timeout` seconds; what is left is cancelled (its connection closed)."""
        while self._idle:
            pooled = self._idle.pop()
            if pooled.expiry is not None:
                pooled.expiry.cancel()
            self._quit_later(pooled)
        tasks = set(self._closing)
        if not tasks:
            return
        if timeout > 0:
            _, tasks = await asyncio.wait(tasks, timeout=timeout)
        if tasks:
            log.warning("clean-up cut short: %d idle downstream connection(s) closed", len(tasks))
        for task in tasks:
            task.cancel()  # _quit closes its connection on the way out
        await asyncio.gather(*tasks, return_exceptions=True)


POOL_MAX_TRANSACTIONS = 100  # per downstream connection, then QUIT and a new one


@dataclass(eq=False)
class _Pooled:
    """One downstream connection, with what the pool knows of it."""

    client: SmtpClient
    transactions: int = 0
    expiry: asyncio.TimerHandle | None = None


def _discard(client: SmtpClient, how: str, detail: str) -> None:
    log.debug("pooled downstream connection closed by the downstream (%s %s)", how, detail)
    client.close()


async def _quit(client: SmtpClient) -> None:
    try:
        if client.is_connected:
            await client.command("QUIT", timeout=CLOSE_TIMEOUT)
    except (OSError, TimeoutError, SmtpProtocolError):
        pass  # the downstream cleans up
    finally:
        client.close()


def _xforward_arguments(offered: str | None) -> list[list[str]]:
    """The XFORWARD commands' arguments for a downstream that offers XFORWARD (Postfix,
    smtpd_authorized_xforward_hosts), telling it who the client was."""
    if offered is None:
        return []
    return xforward_lines(xforward_commands(offered, _ORIGIN.get()))


def _pipelined_rcpt(
    client: SmtpClient, recipient: str, plan: extensions.DownstreamPlan
) -> bytes | None:
    """The first recipient's RCPT line, to go in the same write as XFORWARD and MAIL
    when the downstream offers PIPELINING (RFC 2920 section 3.1: RCPT may appear
    anywhere in a group): one round trip fewer per transaction. None without
    PIPELINING, or for an address the command line cannot carry (add_recipient then
    gives its refusal as for any other recipient)."""
    if "PIPELINING" not in client.extensions:
        return None
    try:
        return command_line("RCPT", f"TO:<{recipient}>", _encoding(plan))
    except SmtpArgumentError:
        return None


async def _send_commands(client: SmtpClient, lines: list[bytes]) -> list[Reply]:
    """The replies to `lines`, in order, up to a 421 or the downstream's close (after
    which nothing comes).

    To a downstream that offers PIPELINING all lines go in one write (RFC 2920
    section 3.1: none of XFORWARD, MAIL and RCPT need be last in a group, and
    Postfix's XFORWARD_README says XFORWARD "may be pipelined when the server supports
    ESMTP command pipelining"): one round trip per transaction instead of three.
    Otherwise one command at a time, each waiting for its reply (RFC 5321 section 4.3).
    """
    if len(lines) == 1 or "PIPELINING" in client.extensions:
        return await client.pipeline(lines)
    replies: list[Reply] = []
    for line in lines:
        replies += await client.pipeline([line])
        if replies[-1].code == SERVICE_CLOSING:
            break
    return replies


def _encoding(plan: extensions.DownstreamPlan) -> str:
    """How addresses go on the wire: UTF-8 only under SMTPUTF8 (RFC 6531 section 3.3)."""
    return "utf-8" if plan.smtputf8 else "ascii"


class _SmtpDelivery:
    def __init__(
        self, relay: SmtpRelay, pooled: _Pooled, name: str, plan: extensions.DownstreamPlan
    ) -> None:
        self.relay = relay
        self.pooled = pooled
        self.client = pooled.client
        self.name = name
        self.plan = plan
        self.finished = False
        # Every command so far got a reply: the connection is in a known state.
        # A timeout or a lost connection leaves it unknown (mid-DATA, say): not reused.
        self.in_step = True
        self.closed = False  # close() ran: the connection is no longer this delivery's
        # The first recipient's RCPT went with MAIL (SmtpRelay._start): its reply.
        self.first_recipient: tuple[str, Reply] | None = None

    def _take_first(self, recipient: str) -> Reply | None:
        """The reply already read for `recipient`'s pipelined RCPT, once."""
        first, self.first_recipient = self.first_recipient, None
        if first is not None and first[0] == recipient:
            return first[1]
        assert first is None, "the pipelined RCPT was for the first recipient asked"
        return None

    async def add_recipient(self, recipient: str) -> Reply:
        try:
            reply = self._take_first(recipient) or await self.client.command(
                "RCPT", f"TO:<{recipient}>", _encoding(self.plan)
            )
        except SmtpArgumentError:
            return UNSENDABLE_ADDRESS
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            self.in_step = False
            return _failure(exc, self.name)
        if reply.code in (250, 251):  # RFC 5321 section 4.1.1.3
            return reply
        return _refusal(reply, f"RCPT TO:<{recipient}>")

    async def send(self, message: bytes) -> Reply:
        refusal = extensions.content_refusal(message, self.plan)
        if refusal is not None:
            return refusal  # ours (RFC 6152 section 3); the outcome line logs it
        try:
            start, replies = await self.client.data(message)
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            self.in_step = False
            reply = _failure(exc, self.name)
        else:
            if start.code != 354:
                reply = _refusal(start, "DATA")
            elif replies[0].code != 250:
                reply = _refusal(replies[0], "DATA")
            else:
                reply = replies[0]
        self.finished = reply.is_success
        return reply

    async def close(self) -> None:
        """The transaction is over: a clean connection goes back to the pool (after
        RSET unless DATA succeeded), any other gets its QUIT. Idempotent: only the first
        call acts, since after it the connection may already serve another transaction."""
        if self.closed:
            return
        self.closed = True
        client = self.client
        if not client.is_connected:
            client.close()
            return
        if not self.in_step:
            client.close()  # its state is unknown (a timeout mid-DATA, say): no QUIT either
            return
        try:
            if not self.finished:
                reply = await client.command("RSET", timeout=CLOSE_TIMEOUT)
                if reply.code != 250:
                    await _quit(client)
                    return
        except (OSError, TimeoutError, SmtpProtocolError):
            client.close()  # the transaction is over either way; the downstream cleans up
            return
        except BaseException:
            client.close()
            raise
        self.relay.release(self.pooled)


def _worst(replies: Sequence[Reply]) -> Reply:
    transient = [r for r in replies if r.is_transient]
    permanent = [r for r in replies if r.code >= 500]
    return (transient or permanent or list(replies))[0]


def _refusal(reply: Reply, what: str) -> Reply:
    """A downstream's reply other than the expected one, as our client gets it: 4xx
    and 5xx passed on (421 as 451), anything else is a local error (4xx: the sender
    keeps the message)."""
    passed = _passed_on(reply)
    if reply.code < 400:
        log.warning("downstream answered %s with unexpected %s", what, passed)
        return LOCAL_ERROR
    return passed


def _failure(exc: BaseException, name: str) -> Reply:
    if isinstance(exc, TimeoutError):
        log.warning("downstream %s timed out: %s", name, exc)
        return DOWNSTREAM_TIMEOUT
    log.warning("downstream %s unavailable: %s", name, exc)
    return DOWNSTREAM_UNAVAILABLE


# --- LMTP --------------------------------------------------------------------


class LmtpRelay:
    """Live relay to an LMTP server (Dovecot, Cyrus), one connection per transaction."""

    def __init__(self, downstream: Downstream, config: RelayConfig, helo_name: str) -> None:
        assert downstream.address is not None
        self.address = downstream.address
        self.name = str(downstream)
        self.config = config
        self.helo_name = helo_name

    def prepare(self) -> None:
        return None

    async def shutdown(self, timeout: float) -> None:
        return None  # one connection per transaction: nothing kept open

    async def open(self, sender: str, mail_options: Sequence[str], recipient: str) -> Opened:
        try:
            client, greeting = await SmtpClient.connect(
                self.address.host,
                self.address.port,
                connect_timeout=self.config.connect_timeout,
                timeout=self.config.timeout,
            )
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            return Opened(None, _failure(exc, self.name))
        plan = extensions.DownstreamPlan((), False, False)
        try:
            plan, reply = await self._start(client, greeting, sender, mail_options, recipient)
        except SmtpArgumentError:
            reply = UNSENDABLE_ADDRESS
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            reply = _failure(exc, self.name)
        except BaseException:
            client.close()
            raise
        if not reply.is_success:
            client.close()
            return Opened(None, reply)
        return Opened(_LmtpDelivery(client, self.name, plan), reply)

    async def _start(
        self,
        client: SmtpClient,
        greeting: Reply,
        sender: str,
        mail_options: Sequence[str],
        recipient: str,
    ) -> tuple[extensions.DownstreamPlan, Reply]:
        unplanned = extensions.DownstreamPlan((), False, False)
        if greeting.code != 220:
            return unplanned, _failure(SmtpProtocolError(f"greeting {greeting}"), self.name)
        hello = await client.hello("LHLO", self.helo_name)
        if hello.code != 250:
            return unplanned, _failure(SmtpProtocolError(f"LHLO answered {hello}"), self.name)
        # The LHLO reply's lines after the first are the keywords (RFC 2033 section 4.1).
        offered = client.extensions.keys()
        plan = extensions.plan_downstream(sender, recipient, mail_options, offered)
        if plan.refusal is not None:
            return plan, plan.refusal  # ours; the outcome line logs it
        envelope_sender = "" if sender == "<>" else sender
        parameters = "".join(f" {option}" for option in plan.options)
        mail = await client.command("MAIL", f"FROM:<{envelope_sender}>{parameters}")
        return plan, _passed_on(mail)


class _LmtpDelivery:
    def __init__(self, client: SmtpClient, name: str, plan: extensions.DownstreamPlan) -> None:
        self.client = client
        self.name = name
        self.plan = plan
        self.accepted = 0
        self.finished = False

    async def add_recipient(self, recipient: str) -> Reply:
        try:
            reply = _passed_on(await self.client.command("RCPT", f"TO:<{recipient}>"))
        except SmtpArgumentError:
            return UNSENDABLE_ADDRESS
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            return _failure(exc, self.name)
        if reply.is_success:
            self.accepted += 1
        return reply

    async def send(self, message: bytes) -> Reply:
        """One reply must stand for all recipients (RFC 2033 section 4.2), and nothing
        may be acknowledged that was not delivered: a temporary failure of any
        recipient wins (the sender retries; those already delivered may see a
        duplicate, the lesser harm), then a permanent one; 250 only if all got it.
        """
        refusal = extensions.content_refusal(message, self.plan)
        if refusal is not None:
            return refusal  # ours (RFC 6152 section 3); the outcome line logs it
        try:
            start, replies = await self.client.data(message, self.accepted)
            if start.code != 354 and start.code < 400:
                raise SmtpProtocolError(f"DATA answered {start}")
            if any(300 <= reply.code < 400 for reply in replies):
                raise SmtpProtocolError("a per-recipient reply that is neither 2xx, 4xx nor 5xx")
        except (OSError, TimeoutError, SmtpProtocolError) as exc:
            self.client.close()
            return _failure(exc, self.name)
        if start.code != 354:
            return _passed_on(start)
        for index, reply in enumerate(replies, start=1):
            log.info("lmtp %s recipient #%d: %s", self.name, index, reply)
        self.finished = all(reply.is_success for reply in replies)
        return _worst([_passed_on(reply) for reply in replies])

    async def close(self) -> None:
        # Clean-up must not hold anything up for long (CLOSE_TIMEOUT, as for SMTP).
        self.client.timeout = min(self.client.timeout, CLOSE_TIMEOUT)
        try:
            if not self.finished:
                await self.client.command("RSET")
            await self.client.command("QUIT")
        except (OSError, TimeoutError, SmtpProtocolError):
            pass  # the transaction is over either way
        finally:
            self.client.close()


def _passed_on(reply: Reply) -> Reply:
    """A downstream reply as our client may get it (a 421 would say *we* close)."""
    if reply.code == 421:
        return Reply(451, reply.enhanced or "4.4.2", reply.lines)
    return reply


# --- Maildir -----------------------------------------------------------------


class MaildirRelay:
    """The embedded downstream: one Maildir, written atomically (tmp, then new)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The Maildir spec's per-process delivery sequence (the Q part of a file name);
        # the relay is one per worker process, and the name also holds the pid.
        self._sequence = itertools.count(1)

    def next_sequence(self) -> int:
        return next(self._sequence)

    def prepare(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    async def shutdown(self, timeout: float) -> None:
        return None

    async def open(self, sender: str, mail_options: Sequence[str], recipient: str) -> Opened:
        # A Maildir stores bytes: 8-bit and UTF-8 (RFC 6531, RFC 6532) need nothing more.
        return Opened(_MaildirDelivery(self), SENDER_OK)


class _MaildirDelivery:
    def __init__(self, relay: MaildirRelay) -> None:
        self.relay = relay

    async def add_recipient(self, recipient: str) -> Reply:
        return RECIPIENT_OK

    async def send(self, message: bytes) -> Reply:
        try:
            name = write_maildir(self.relay.root, message, self.relay.next_sequence())
        except OSError as exc:
            log.error("maildir %s: cannot deliver: %s", self.relay.root, exc)
            return MAILBOX_UNAVAILABLE
        return maildir_delivered(name)

    async def close(self) -> None:
        return None


def write_maildir(root: Path, message: bytes, sequence: int) -> str:
    """Deliver `message` into the Maildir at `root`; returns the file name.

    `sequence` is the delivery's number in this process (the name's Q part): with the
    time and the pid it makes the name unique.

    The file is written and fsync'ed under tmp/ and then renamed into new/, so a
    reader never sees a partial message and a crash leaves at most a tmp/ file.
    A synchronous write is acceptable here: the Maildir is the demo and test
    downstream, not the path a production deployment takes.
    """
    now = time.time()
    unique = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{sequence}"
    name = f"{unique}.{socket.gethostname().replace('/', '_').replace(':', '_')}"
    tmp_path = root / "tmp" / name
    with open(tmp_path, "xb") as fh:
        fh.write(message)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp_path, root / "new" / name)
    return name
