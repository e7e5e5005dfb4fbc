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
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosmtplib

from arproxy import extensions
from arproxy.config import Downstream, RelayConfig
from arproxy.lmtp import LmtpArgumentError, LmtpClient, LmtpProtocolError
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


def xtext(value: str) -> str:
    """RFC 3461 section 4: "+", "=" and octets outside 33-126 as "+HH"."""
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
        address = self.downstream.address
        assert address is not None
        client = aiosmtplib.SMTP(
            hostname=address.host,
            port=address.port,
            timeout=self.config.timeout,
            # Plain by default: the downstream sits on a trusted network next to us,
            # and opportunistic TLS with an unverifiable certificate would only fail.
            start_tls=False,
            use_tls=False,
            local_hostname=self.helo_name,
        )
        try:
            await client.connect(timeout=self.config.connect_timeout)
            self.connections_opened += 1
            await client.ehlo(hostname=self.helo_name)
        except (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError) as exc:
            # A downstream that will not talk to us is a fault on our side of the
            # border: the sender must keep the message (4xx), not bounce it.
            client.close()
            return Opened(None, _failure(exc, str(self.downstream)))
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            return Opened(None, _failure(exc, str(self.downstream)))
        except BaseException:
            client.close()  # cancelled (client gone, shutdown): no connection may leak
            raise
        opened = await self._begin(_Pooled(client), sender, mail_options, recipient, reused=False)
        assert opened is not None  # a new connection is never retried
        return opened

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
            started = await self._start(client, sender, mail_options, recipient)
        except aiosmtplib.SMTPResponseException as exc:
            if reused and exc.code == 421:
                _discard(client, "421", exc.message)
                return None
            client.close()
            return Opened(None, _refusal(exc, f"MAIL FROM:<{sender}>"))
        except ValueError:
            client.close()  # aiosmtplib refuses control characters in the address
            return Opened(None, UNSENDABLE_ADDRESS)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            if reused:
                _discard(client, "EOF", str(exc))
                return None
            client.close()
            return Opened(None, _failure(exc, str(self.downstream)))
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            return Opened(None, _failure(exc, str(self.downstream)))
        except BaseException:
            client.close()
            raise
        plan, response = started
        if plan.refusal is not None:
            # Refused by us before MAIL: the downstream never saw this transaction,
            # and the connection is as clean as before it.
            # Not logged here: the pipeline's outcome line is the one line (RFC 6531).
            self.release(pooled)
            return Opened(None, plan.refusal)
        assert response is not None
        return Opened(
            _SmtpDelivery(self, pooled, str(self.downstream), plan),
            Reply.from_downstream(response.code, response.message),
        )

    async def _start(
        self, client: aiosmtplib.SMTP, sender: str, mail_options: Sequence[str], recipient: str
    ) -> tuple[extensions.DownstreamPlan, aiosmtplib.SMTPResponse | None]:
        offered = frozenset(keyword.upper() for keyword in client.esmtp_extensions)
        plan = extensions.plan_downstream(sender, recipient, mail_options, offered)
        if plan.refusal is not None:
            return plan, None
        # XFORWARD holds for one transaction (Postfix resets it at its end): sent
        # each time, also on a reused connection.
        await _xforward(client, client.esmtp_extensions.get("xforward"))
        # aiosmtpd hands the null reverse-path over as "<>"; aiosmtplib writes
        # MAIL FROM:<> for the empty string and refuses "<>" itself.
        envelope_sender = "" if sender == "<>" else sender
        response = await client.mail(
            envelope_sender, options=plan.options, encoding=_encoding(plan)
        )
        return plan, response

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

    client: aiosmtplib.SMTP
    transactions: int = 0
    expiry: asyncio.TimerHandle | None = None


def _discard(client: aiosmtplib.SMTP, how: str, detail: str) -> None:
    log.debug("pooled downstream connection closed by the downstream (%s %s)", how, detail)
    client.close()


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await client.quit(timeout=CLOSE_TIMEOUT)
    except (aiosmtplib.SMTPException, OSError):
        pass  # the downstream cleans up
    finally:
        client.close()


async def _xforward(client: aiosmtplib.SMTP, offered: str | None) -> None:
    """Tell a downstream that offers XFORWARD (Postfix, smtpd_authorized_xforward_hosts)
    who the client was; a refusal only costs the downstream's log that detail."""
    if offered is None:
        return
    for arguments in xforward_lines(xforward_commands(offered, _ORIGIN.get())):
        response = await client.execute_command(
            b"XFORWARD", *(argument.encode("ascii") for argument in arguments)
        )
        if response.code != 250:
            log.info("downstream refused XFORWARD %s: %s", " ".join(arguments), response.code)
            return


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

    async def add_recipient(self, recipient: str) -> Reply:
        try:
            response = await self.client.rcpt(recipient, encoding=_encoding(self.plan))
        except aiosmtplib.SMTPResponseException as exc:
            return _refusal(exc, f"RCPT TO:<{recipient}>")
        except ValueError:
            return UNSENDABLE_ADDRESS
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.in_step = False
            return _failure(exc, self.name)
        return Reply.from_downstream(response.code, response.message)

    async def send(self, message: bytes) -> Reply:
        refusal = extensions.content_refusal(message, self.plan)
        if refusal is not None:
            return refusal  # ours (RFC 6152 section 3); the outcome line logs it
        try:
            response = await self.client.data(message)
            reply = Reply.from_downstream(response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            reply = _refusal(exc, "DATA")
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.in_step = False
            reply = _failure(exc, self.name)
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
            return
        if not self.in_step:
            client.close()  # its state is unknown (a timeout mid-DATA, say): no QUIT either
            return
        try:
            if not self.finished:
                response = await client.rset(timeout=CLOSE_TIMEOUT)
                if response.code != 250:
                    await _quit(client)
                    return
        except (aiosmtplib.SMTPException, OSError):
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


def _refusal(exc: aiosmtplib.SMTPResponseException, what: str) -> Reply:
    reply = _passed_on(Reply.from_downstream(exc.code, exc.message))
    if exc.code < 400:
        log.warning("downstream answered %s with unexpected %s", what, reply)
        return LOCAL_ERROR
    return reply


def _failure(exc: BaseException, name: str) -> Reply:
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
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
            client, greeting = await LmtpClient.connect(
                self.address.host,
                self.address.port,
                connect_timeout=self.config.connect_timeout,
                timeout=self.config.timeout,
            )
        except (OSError, TimeoutError, LmtpProtocolError) as exc:
            return Opened(None, _failure(exc, self.name))
        plan = extensions.DownstreamPlan((), False, False)
        try:
            plan, reply = await self._start(client, greeting, sender, mail_options, recipient)
        except LmtpArgumentError:
            reply = UNSENDABLE_ADDRESS
        except (OSError, TimeoutError, LmtpProtocolError) as exc:
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
        client: LmtpClient,
        greeting: Reply,
        sender: str,
        mail_options: Sequence[str],
        recipient: str,
    ) -> tuple[extensions.DownstreamPlan, Reply]:
        unplanned = extensions.DownstreamPlan((), False, False)
        if greeting.code != 220:
            return unplanned, _failure(LmtpProtocolError(f"greeting {greeting}"), self.name)
        hello = await client.command("LHLO", self.helo_name)
        if hello.code != 250:
            return unplanned, _failure(LmtpProtocolError(f"LHLO answered {hello}"), self.name)
        # The LHLO reply's lines after the first are the keywords (RFC 2033 section 4.1).
        offered = extensions.offered_keywords(("", *hello.lines[1:]))
        plan = extensions.plan_downstream(sender, recipient, mail_options, offered)
        if plan.refusal is not None:
            return plan, plan.refusal  # ours; the outcome line logs it
        envelope_sender = "" if sender == "<>" else sender
        parameters = "".join(f" {option}" for option in plan.options)
        mail = await client.command("MAIL", f"FROM:<{envelope_sender}>{parameters}")
        return plan, _passed_on(mail)


class _LmtpDelivery:
    def __init__(self, client: LmtpClient, name: str, plan: extensions.DownstreamPlan) -> None:
        self.client = client
        self.name = name
        self.plan = plan
        self.accepted = 0
        self.finished = False

    async def add_recipient(self, recipient: str) -> Reply:
        try:
            reply = _passed_on(await self.client.command("RCPT", f"TO:<{recipient}>"))
        except LmtpArgumentError:
            return UNSENDABLE_ADDRESS
        except (OSError, TimeoutError, LmtpProtocolError) as exc:
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
        except (OSError, TimeoutError, LmtpProtocolError) as exc:
            return _failure(exc, self.name)
        if start.code != 354:
            return _passed_on(start)
        for index, reply in enumerate(replies, start=1):
            log.info("lmtp %s recipient #%d: %s", self.name, index, reply)
        self.finished = all(reply.is_success for reply in replies)
        return _worst([_passed_on(reply) for reply in replies])

    async def close(self) -> None:
        # Clean-up must not hold anything up for long (as with SMTP's 5 s below).
        self.client.timeout = min(self.client.timeout, CLOSE_TIMEOUT)
        try:
            if not self.finished:
                await self.client.command("RSET")
            await self.client.command("QUIT")
        except (OSError, TimeoutError, LmtpProtocolError):
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
