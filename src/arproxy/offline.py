"""`arproxy check`: the same checks on a message file, outside any SMTP session.

What an administrator reaches for when a result looks wrong: the message, the
client's address, HELO and MAIL FROM as the log recorded them, and the field
arproxy would write, computed by the very same session (`pipeline.Session`), runner
and formatter as a live message.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from arproxy.checks.base import Stage
from arproxy.config import Config, HostPort, split_host_port
from arproxy.dns import Resolver
from arproxy.outcome import ClientFacts
from arproxy.pipeline import Pipeline, Session, format_results, helo_acceptable
from arproxy.resources import WorkerResources


class UsageError(ValueError):
    """A command-line value that cannot be used; the message says which."""


@dataclass(frozen=True)
class OfflineRequest:
    message: bytes
    client_ip: str | None
    helo: str | None
    mail_from: str | None
    auth_user: str | None
    nameservers: tuple[HostPort, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OfflineRequest:
        if args.client_ip is not None:
            try:
                ipaddress.ip_address(args.client_ip)
            except ValueError as exc:
                raise UsageError(f"--client-ip {args.client_ip!r}: {exc}") from exc
        if args.helo is not None and not helo_acceptable(args.helo):
            # The live session refuses it (501 5.5.4): it never reaches a check.
            raise UsageError(f"--helo {args.helo!r}: not a name a client may give")
        try:
            servers = tuple(split_host_port(s, default_port=53) for s in args.nameserver)
        except ValueError as exc:
            raise UsageError(f"--nameserver: {exc}") from exc
        try:
            raw = (
                sys.stdin.buffer.read() if args.message == "-" else Path(args.message).read_bytes()
            )
        except OSError as exc:
            raise UsageError(f"cannot read {args.message}: {exc.strerror or exc}") from exc
        return cls(to_crlf(raw), args.client_ip, args.helo, args.mail_from, args.auth_user, servers)


def to_crlf(message: bytes) -> bytes:
    """Files on disk usually have LF line ends; SMTP (and DKIM) see CRLF."""
    if b"\r\n" in message:
        return message
    return message.replace(b"\n", b"\r\n")


async def check_message(config: Config, request: OfflineRequest) -> str:
    resolver = Resolver(request.nameservers or config.dns.nameservers, config.dns.timeout)
    # The same worker resources `serve` builds (pools, resolver), closed when done.
    resources = WorkerResources.build(config, resolver=resolver)
    pipeline = Pipeline(config, resources=resources)
    checks = None
    if request.client_ip is None:
        # Without the client's address there is nothing to check at connect, HELO
        # or MAIL: run only what the message itself carries.
        checks = tuple(c for c in pipeline.checks if c.stage >= Stage.DATA)
    session = Session(pipeline, ClientFacts(ip=request.client_ip or "0.0.0.0"), checks=checks)
    try:
        if request.helo:
            await session.helo(request.helo, esmtp=True)
        if request.auth_user:
            session.authenticated(request.auth_user)
        results = await session.evaluate(request.message, sender=request.mail_from or None)
    finally:
        session.close()
        await resources.close()
    return format_results(config.server.authserv_id, results)
