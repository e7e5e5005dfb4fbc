"""One mail transaction, from MAIL to the DATA reply.

The data flow is one way: the session hands over what the client said, the
transaction asks policy whether each recipient may be relayed to, opens the
downstream transaction, builds our Authentication-Results and Received fields,
asks `rewrite` for the header surgery and `relay` for delivery, and returns the
reply to give. The server only translates between aiosmtpd and these calls.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from arproxy import authres, extensions, policy
from arproxy.checks.base import MethodResult
from arproxy.checks.runner import SessionChecks, configured_checks
from arproxy.config import Config
from arproxy.dns import Resolver
from arproxy.idn import address_with_a_labels
from arproxy.intake import IntakeLimits, take_in
from arproxy.relay import Delivery, Relay, make_relay
from arproxy.replies import (
    DOWNSTREAM_TIMEOUT,
    DOWNSTREAM_UNAVAILABLE,
    LOCAL_ERROR,
    RELAY_DENIED,
    ROUTING_DENIED,
    Reply,
)
from arproxy.resources import WorkerResources
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

    def __init__(
        self,
        config: Config,
        relay: Relay | None = None,
        resolver: Resolver | None = None,
        *,
        resources: WorkerResources | None = None,
    ) -> None:
        """Build inside the running event loop: the resolver belongs to it. `resources`
        (the worker's, closed by whoever built them) are built here when not given."""
        self.config = config
        self.relay = relay or make_relay(config.relay, config.server.hostname)
        self.resources = resources or WorkerResources.build(config, resolver=resolver)
        self.resolver = self.resources.resolver
        self.checks = configured_checks(config.checks, self.resources)
        self._background: set[asyncio.Future[None]] = set()
        self.intake_limits = IntakeLimits(
            bare_newline=config.limits.bare_newline,
            eight_bit_header=config.limits.eight_bit_header,
            max_header_size=config.limits.max_header_size,
            max_header_fields=config.limits.max_header_fields,
        )
        own = (config.server.authserv_id, *config.headers.trusted_authserv_ids)
        self.forgery_policy = ForgeryPolicy(own_ids=own, action=config.headers.forged)

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run clean-up work (QUIT to the downstream) without holding a reply for it;
        the task is kept so it is not collected mid-flight, and awaited at shutdown."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background clean-up failed: %s", error, exc_info=error)

    async def finish_background(self, timeout: float) -> None:
        """Wait for clean-up work (new tasks may appear while waiting), then cancel
        whatever is still running when `timeout` is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._background and loop.time() < deadline:
            await asyncio.wait(set(self._background), timeout=deadline - loop.time())
        rest = list(self._background)
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def start_session(self, client_ip: str) -> SessionChecks:
        """The checks of a new SMTP session; iprev starts right away."""
        skipped = SessionChecks.is_skipped(client_ip, self.config.checks)
        if skipped:
            log.info("client=%s checks skipped (checks.skip_clients)", client_ip)
        checks = SessionChecks(self.resolver, self.checks, client_ip, skipped=skipped)
        checks.on_connect()
        return checks

    def begin(
        self,
        client: ClientInfo,
        checks: SessionChecks,
        sender: str,
        mail_options: Sequence[str],
    ) -> Transaction:
        checks.on_mail(sender)
        return Transaction(self, client, checks, sender, tuple(mail_options))


def new_queue_id() -> str:
    """A short unique id for the Received line and every log line of a transaction."""
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii")


class Transaction:
    def __init__(
        self,
        pipeline: Pipeline,
        client: ClientInfo,
        checks: SessionChecks,
        sender: str,
        mail_options: tuple[str, ...],
    ) -> None:
        self.pipeline = pipeline
        self.client = client
        self.checks = checks
        self.sender = sender
        self.mail_options = mail_options
        self.queue_id = new_queue_id()
        # RFC 6531: UTF-8 addresses and header fields (RFC 6532) are allowed.
        self.smtputf8 = extensions.is_smtputf8(mail_options)
        self.recipients: list[str] = []
        self._delivery: Delivery | None = None
        self._started = time.monotonic()

    def _log_prefix(self) -> str:
        return f"id={self.queue_id} client={self.client.ip}"

    async def add_recipient(self, recipient: str) -> Reply:
        config = self.pipeline.config
        authenticated = self.client.auth_identity is not None
        # domains.local holds A-labels; a U-label domain (RFC 6531) is compared in
        # its A-label form, and one with no unambiguous A-label is not local.
        comparable = address_with_a_labels(recipient) or ""
        if not policy.may_relay_to(comparable, config.domains.local, authenticated=authenticated):
            refusal = relay_refusal(comparable, config.domains.local)
            log.info(
                "%s from=<%s> to=<%s> reject: %s",
                self._log_prefix(),
                envelope_address(self.sender),
                printable(recipient),
                refusal,
            )
            return refusal
        if self._delivery is None:
            opened = await self.pipeline.relay.open(self.sender, self.mail_options, recipient)
            if opened.delivery is None:
                log.info(
                    "%s from=<%s> %s: %s",
                    self._log_prefix(),
                    envelope_address(self.sender),
                    "not relayed" if opened.reply in OUR_FAILURES else "downstream refused sender",
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
        intake = take_in(content, self.pipeline.intake_limits, smtputf8=self.smtputf8)
        if intake.refusal is not None:
            self.close_later()
            log.info(
                "%s from=<%s> reject: %s (%s)",
                self._log_prefix(),
                envelope_address(self.sender),
                intake.refusal,
                intake.reason,
            )
            return intake.refusal
        content = intake.content
        results = await self.checks.collect(content, config.dns.message_budget)
        field = format_results(config.server.authserv_id, results, utf8=self.smtputf8)
        verdict = policy.decide(results, config.policy)
        if verdict.reply is not None:
            self.close_later()
            log.info(
                "%s from=<%s> reject by policy (%s): %s | %s",
                self._log_prefix(),
                envelope_address(self.sender),
                verdict.reason,
                verdict.reply,
                " ".join(field.split()),
            )
            return verdict.reply
        prepend = [field.encode("utf-8"), received_field(self._trace_info())]
        outcome = rewrite_header(content, prepend, self.pipeline.forgery_policy)
        reply = await self._delivery.send(outcome.message)
        self.close_later()
        log.info(
            "%s helo=%s from=<%s> nrcpt=%d size=%d forged=%d results=[%s] relay=%s reply=%r "
            "time=%.3f",
            self._log_prefix(),
            printable(self.client.helo or ""),
            envelope_address(self.sender),
            len(self.recipients),
            len(content),
            len(outcome.removed),
            summary(results),
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

    def close_later(self) -> None:
        """End the downstream transaction without holding our reply for its RSET/QUIT:
        a client kept waiting might time out and resend what was already delivered."""
        delivery, self._delivery = self._delivery, None
        if delivery is not None:
            self.pipeline.in_background(delivery.close())

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
            smtputf8=self.smtputf8,
        )

    async def close(self) -> None:
        """Abandon (or finish) the downstream transaction; safe to call twice."""
        delivery, self._delivery = self._delivery, None
        if delivery is not None:
            await delivery.close()


def format_results(authserv_id: str, results: Sequence[MethodResult], *, utf8: bool = False) -> str:
    """Our Authentication-Results field, folded, ending in CRLF.

    `utf8` for an SMTPUTF8 message: its header may carry UTF-8 (RFC 6532 section 3),
    so values are written as they are, U-labels and UTF-8 local parts included
    (RFC 8616 section 3). Otherwise the field is ASCII: U-label domains are written
    as A-labels, and a value with a UTF-8 local part cannot be written at all.

    Checks keep client-controlled text that the formatter cannot write out of
    their results; should one slip through anyway, that result loses its
    properties rather than the message its field (and the log says so).
    """
    resinfos = []
    for result in results:
        resinfo = result.to_resinfo()
        if not utf8:
            (resinfo,) = authres.with_a_labels(
                authres.AuthenticationResults("", (resinfo,))
            ).results
        try:
            authres.format_field(
                authres.AuthenticationResults(authserv_id, (resinfo,)), allow_utf8=utf8
            )
        except authres.FormatError as exc:
            log.warning(
                "%s result not writable (%s): written without properties", result.method, exc
            )
            resinfo = authres.ResInfo(resinfo.method, resinfo.result)
        resinfos.append(resinfo)
    return authres.format_field(
        authres.AuthenticationResults(authserv_id, tuple(resinfos)), allow_utf8=utf8
    )


# Replies arproxy gives when the downstream could not be asked: not its refusals.
OUR_FAILURES = (DOWNSTREAM_UNAVAILABLE, DOWNSTREAM_TIMEOUT, LOCAL_ERROR)


def relay_refusal(recipient: str, local_domains: Sequence[str]) -> Reply:
    """Why `policy.may_relay_to` refused: a domain that is not local, or a local
    domain whose local part routes elsewhere (`%`, `!`, a quoted `@`)."""
    domain = policy.recipient_domain(recipient)
    if domain is not None and domain in set(local_domains):
        return ROUTING_DENIED
    return RELAY_DENIED


def envelope_address(address: str) -> str:
    """A MAIL FROM or RCPT TO address for `<%s>` in a log line: the null reverse-path,
    which aiosmtpd hands over as "<>", is written `<>` (RFC 5321 section 4.5.5)."""
    return "" if address == "<>" else printable(address)


def summary(results: Sequence[MethodResult]) -> str:
    return " ".join(f"{r.method}={r.value.value}" for r in results) or "none"


def printable(text: str) -> str:
    """Client text made safe for one log line: controls and non-ASCII escaped."""
    return text.encode("ascii", "backslashreplace").decode("ascii").translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
