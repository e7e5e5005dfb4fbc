"""One mail transaction, from MAIL to the DATA reply.

The data flow is one way: the session hands over what the client said, the
transaction asks policy whether each recipient may be relayed to, opens the
downstream transaction, builds our Authentication-Results and Received fields,
asks `rewrite` for the header surgery and `relay` for delivery, and returns the
reply to give. The server only translates between aiosmtpd and these calls.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from arproxy import authres, policy
from arproxy.config import Config
from arproxy.relay import Delivery, Relay, make_relay
from arproxy.replies import RELAY_DENIED, Reply
from arproxy.rewrite import ForgeryPolicy, rewrite_header
from arproxy.trace import TraceInfo, received_field

log = logging.getLogger("arproxy.pipeline")


@dataclass(frozen=True)
class ClientInfo:
    """What is known about the SMTP client when a transaction starts (immutable)."""

    ip: str
    port: int
    helo: str | None
    esmtp: bool
    tls: bool = False
    auth_identity: str | None = None


class Pipeline:
    """Everything a transaction needs that outlives it; one per worker process."""

    def __init__(self, config: Config, relay: Relay | None = None) -> None:
        self.config = config
        self.relay = relay or make_relay(config.relay, config.server.hostname)
        own = (config.server.authserv_id, *config.headers.trusted_authserv_ids)
        self.forgery_policy = ForgeryPolicy(own_ids=own, action=config.headers.forged)

    def begin(self, client: ClientInfo, sender: str, mail_options: Sequence[str]) -> Transaction:
        return Transaction(self, client, sender, tuple(mail_options))


def new_queue_id() -> str:
    """A short unique id for the Received line and every log line of a transaction."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii")


class Transaction:
    def __init__(
        self, pipeline: Pipeline, client: ClientInfo, sender: str, mail_options: tuple[str, ...]
    ) -> None:
        self.pipeline = pipeline
        self.client = client
        self.sender = sender
        self.mail_options = mail_options
        self.queue_id = new_queue_id()
        self.recipients: list[str] = []
        self._delivery: Delivery | None = None
        self._started = time.monotonic()

    def _log_prefix(self) -> str:
        return f"id={self.queue_id} client={self.client.ip}"

    async def add_recipient(self, recipient: str) -> Reply:
        config = self.pipeline.config
        authenticated = self.client.auth_identity is not None
        if not policy.may_relay_to(recipient, config.domains.local, authenticated=authenticated):
            log.info(
                "%s from=<%s> to=<%s> reject: %s",
                self._log_prefix(),
                printable(self.sender),
                printable(recipient),
                RELAY_DENIED,
            )
            return RELAY_DENIED
        if self._delivery is None:
            opened = await self.pipeline.relay.open(self.sender, self.mail_options)
            if opened.delivery is None:
                log.info(
                    "%s from=<%s> downstream refused sender: %s",
                    self._log_prefix(),
                    printable(self.sender),
                    opened.reply,
                )
                return opened.reply
            self._delivery = opened.delivery
        reply = await self._delivery.add_recipient(recipient)
        if reply.is_success:
            self.recipients.append(recipient)
        else:
            log.info(
                "%s to=<%s> downstream refused recipient: %s",
                self._log_prefix(),
                printable(recipient),
                reply,
            )
        return reply

    async def deliver(self, content: bytes) -> Reply:
        """Authenticate, rewrite and relay the message; the reply is the downstream's."""
        assert self._delivery is not None, "DATA is only reached with an accepted recipient"
        config = self.pipeline.config
        results = authres.AuthenticationResults(config.server.authserv_id, ())
        prepend = [
            authres.format_field(results).encode("ascii"),
            received_field(self._trace_info()),
        ]
        outcome = rewrite_header(content, prepend, self.pipeline.forgery_policy)
        reply = await self._delivery.send(outcome.message)
        await self.close()
        log.info(
            "%s helo=%s from=<%s> nrcpt=%d size=%d forged=%d relay=%s reply=%r time=%.3f",
            self._log_prefix(),
            printable(self.client.helo or ""),
            printable(self.sender),
            len(self.recipients),
            len(content),
            len(outcome.removed),
            config.relay.downstream,
            str(reply).replace("\r\n", " / "),
            time.monotonic() - self._started,
        )
        if outcome.removed:
            log.info(
                "%s %s forged Authentication-Results of %s",
                self._log_prefix(),
                "renamed" if config.headers.forged == "rename" else "removed",
                ", ".join(printable(i) for i in outcome.removed),
            )
        return reply

    def _trace_info(self) -> TraceInfo:
        return TraceInfo(
            client_ip=self.client.ip,
            helo=self.client.helo,
            esmtp=self.client.esmtp,
            tls=self.client.tls,
            authenticated=self.client.auth_identity is not None,
            by_host=self.pipeline.config.server.hostname,
            queue_id=self.queue_id,
            recipients=tuple(self.recipients),
            when=datetime.now().astimezone(),
        )

    async def close(self) -> None:
        """Abandon (or finish) the downstream transaction; safe to call twice."""
        delivery, self._delivery = self._delivery, None
        if delivery is not None:
            await delivery.close()


def printable(text: str) -> str:
    """Client text made safe for one log line: controls and non-ASCII escaped."""
    return text.encode("ascii", "backslashreplace").decode("ascii").translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
