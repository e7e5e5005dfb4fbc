"""Downstream delivery: hand a message on and report exactly what happened.

One `Delivery` is one mail transaction with the downstream. For SMTP and LMTP it is
live: MAIL is sent when the first recipient is accepted by our own policy, each RCPT
is forwarded as the client sends it (so per-recipient refusals reach the client
without arproxy ever generating a bounce), and the DATA reply is the downstream's.
Anything that goes wrong on the way becomes a 4xx reply so that the sender keeps the
message and retries: nothing is acknowledged that was not handed on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosmtplib

from arproxy.config import Downstream, RelayConfig
from arproxy.replies import DOWNSTREAM_TIMEOUT, DOWNSTREAM_UNAVAILABLE, LOCAL_ERROR, Reply

log = logging.getLogger("arproxy.relay")


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

    async def open(self, sender: str, mail_options: Sequence[str]) -> Opened: ...


def make_relay(config: RelayConfig, helo_name: str) -> Relay:
    downstream = config.downstream
    if downstream.scheme == "maildir":
        assert downstream.maildir is not None
        return MaildirRelay(downstream.maildir)
    return SmtpRelay(downstream, config, helo_name)


# --- SMTP and LMTP -----------------------------------------------------------


class SmtpRelay:
    """Live relay to an SMTP or LMTP server, one connection per transaction."""

    def __init__(self, downstream: Downstream, config: RelayConfig, helo_name: str) -> None:
        assert downstream.address is not None
        self.downstream = downstream
        self.config = config
        self.helo_name = helo_name
        self.lmtp = downstream.scheme == "lmtp"

    def prepare(self) -> None:
        return None  # connections are opened per transaction

    async def open(self, sender: str, mail_options: Sequence[str]) -> Opened:
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
            await self._greet(client)
            # aiosmtpd hands the null reverse-path over as "<>"; aiosmtplib writes
            # MAIL FROM:<> for the empty string and refuses "<>" itself.
            envelope_sender = "" if sender == "<>" else sender
            options = _forwardable_options(client, mail_options)
            response = await client.mail(envelope_sender, options=options)
        except (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError) as exc:
            # A downstream that will not talk to us is a fault on our side of the
            # border: the sender must keep the message (4xx), not bounce it.
            client.close()
            return Opened(None, _failure(exc, str(self.downstream)))
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            return Opened(None, _refusal(exc, f"MAIL FROM:<{sender}>"))
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            return Opened(None, _failure(exc, str(self.downstream)))
        return Opened(
            _SmtpDelivery(client, self.lmtp, str(self.downstream)),
            Reply.from_downstream(response.code, response.message),
        )

    async def _greet(self, client: aiosmtplib.SMTP) -> None:
        if not self.lmtp:
            await client.ehlo(hostname=self.helo_name)
            return
        response = await client.execute_command(b"LHLO", self.helo_name.encode("ascii"))
        if response.code != 250:
            raise aiosmtplib.SMTPHeloError(response.code, response.message)
        client.last_ehlo_response = response  # records the extensions, skips EHLO


def _forwardable_options(client: aiosmtplib.SMTP, mail_options: Sequence[str]) -> list[str]:
    """The client's MAIL parameters the downstream understands (BODY=8BITMIME today)."""
    wanted = [opt for opt in mail_options if opt.upper().startswith("BODY=")]
    return [opt for opt in wanted if client.supports_extension("8bitmime")]


class _SmtpDelivery:
    def __init__(self, client: aiosmtplib.SMTP, lmtp: bool, name: str) -> None:
        self.client = client
        self.lmtp = lmtp
        self.name = name
        self.accepted = 0
        self.finished = False

    async def add_recipient(self, recipient: str) -> Reply:
        try:
            response = await self.client.rcpt(recipient)
        except aiosmtplib.SMTPResponseException as exc:
            return _refusal(exc, f"RCPT TO:<{recipient}>")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return _failure(exc, self.name)
        self.accepted += 1
        return Reply.from_downstream(response.code, response.message)

    async def send(self, message: bytes) -> Reply:
        try:
            if self.lmtp:
                reply = await self._send_lmtp(message)
            else:
                response = await self.client.data(message)
                reply = Reply.from_downstream(response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            reply = _refusal(exc, "DATA")
        except (aiosmtplib.SMTPException, OSError) as exc:
            reply = _failure(exc, self.name)
        self.finished = reply.is_success
        return reply

    async def _send_lmtp(self, message: bytes) -> Reply:
        """DATA for LMTP: one reply per accepted recipient (RFC 2033 section 4.2).

        A single SMTP reply has to stand for all of them, and nothing may be
        acknowledged that was not delivered: any failure wins over success, a
        temporary one over a permanent one (the sender retries; recipients that
        were already delivered may see a duplicate, which RFC 2033 accepts as
        the lesser harm). Each recipient's outcome is logged.
        """
        first = await self.client.data(message)  # raises on a first refusal
        replies = [Reply.from_downstream(first.code, first.message)]
        protocol = self.client.protocol
        assert protocol is not None
        for _ in range(self.accepted - 1):
            # aiosmtplib reads one reply per command; LMTP sends the rest unasked.
            # They may already sit in its buffer, so parse that before waiting.
            protocol._response_pending = True
            buffered = protocol._read_response_from_buffer()
            response = buffered or await protocol.read_response(timeout=self.client.timeout)
            replies.append(Reply.from_downstream(response.code, response.message))
        for index, reply in enumerate(replies):
            log.debug("lmtp recipient #%d: %s", index + 1, reply)
        return _worst(replies)

    async def close(self) -> None:
        if not self.client.is_connected:
            return
        try:
            if not self.finished:
                await self.client.rset(timeout=5)
            await self.client.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError):
            pass  # the transaction is over either way; the downstream cleans up
        finally:
            self.client.close()


def _worst(replies: Sequence[Reply]) -> Reply:
    transient = [r for r in replies if r.is_transient]
    permanent = [r for r in replies if r.code >= 500]
    return (transient or permanent or list(replies))[0]


def _refusal(exc: aiosmtplib.SMTPResponseException, what: str) -> Reply:
    reply = Reply.from_downstream(exc.code, exc.message)
    if exc.code == 421:
        # The downstream closes on us, but our client's channel stays open: a 421
        # handed on would tell it that *we* are closing.
        reply = Reply(451, reply.enhanced or "4.4.2", reply.lines)
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


# --- Maildir -----------------------------------------------------------------


class MaildirRelay:
    """The embedded downstream: one Maildir, written atomically (tmp, then new)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    async def open(self, sender: str, mail_options: Sequence[str]) -> Opened:
        return Opened(_MaildirDelivery(self), Reply.of(250, "2.1.0", "Sender OK"))


class _MaildirDelivery:
    def __init__(self, relay: MaildirRelay) -> None:
        self.relay = relay

    async def add_recipient(self, recipient: str) -> Reply:
        return Reply.of(250, "2.1.5", "Recipient OK")

    async def send(self, message: bytes) -> Reply:
        try:
            name = write_maildir(self.relay.root, message)
        except OSError as exc:
            log.error("maildir %s: cannot deliver: %s", self.relay.root, exc)
            return Reply.of(451, "4.3.0", "Mailbox unavailable, try again later")
        return Reply.of(250, "2.0.0", f"Ok: delivered as {name}")

    async def close(self) -> None:
        return None


_counter = 0


def write_maildir(root: Path, message: bytes) -> str:
    """Deliver `message` into the Maildir at `root`; returns the file name.

    The file is written and fsync'ed under tmp/ and then renamed into new/, so a
    reader never sees a partial message and a crash leaves at most a tmp/ file.
    A synchronous write is acceptable here: the Maildir is the demo and test
    downstream, not the path a production deployment takes.
    """
    global _counter  # noqa: PLW0603  # a per-process sequence, as the Maildir spec asks
    _counter += 1
    now = time.time()
    unique = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{_counter}"
    name = f"{unique}.{socket.gethostname().replace('/', '_').replace(':', '_')}"
    tmp_path = root / "tmp" / name
    with open(tmp_path, "xb") as fh:
        fh.write(message)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp_path, root / "new" / name)
    return name
