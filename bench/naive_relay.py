"""The benchmark's baseline: a naive aiosmtpd -> aiosmtplib relay that checks nothing.

It accepts every sender and recipient, and at the end of DATA hands the message as
received to the downstream over a new aiosmtplib connection (as arproxy does: no
connection pool), answering 250 once the downstream accepted it, 451 otherwise. No
DNS, no DKIM, no header rewrite, no limits beyond aiosmtpd's own: the cheapest
"correct" relay one can write with the same libraries, so that arproxy's cost is
measured against the libraries' floor rather than against nothing.

    python bench/naive_relay.py --listen 127.0.0.1:PORT --downstream 127.0.0.1:PORT

Runs in the foreground in its own asyncio loop (aiosmtpd's SMTP protocol on
`loop.create_server`, not its threaded Controller) until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session


class RelayHandler:
    """aiosmtpd hooks: accept everything, relay at DATA."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        try:
            await aiosmtplib.send(
                content,
                sender=envelope.mail_from or "",
                recipients=list(envelope.rcpt_tos),
                hostname=self.host,
                port=self.port,
                local_hostname="relay.bench.test",
                timeout=30,
                use_tls=False,
                start_tls=False,
            )
        except (aiosmtplib.SMTPException, OSError) as error:
            return f"451 4.4.1 downstream: {type(error).__name__}"
        return "250 2.0.0 OK"


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], downstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    handler = RelayHandler(*downstream)

    def factory() -> Any:
        return SMTP(handler, hostname="relay.bench.test", data_size_limit=10_240_000)

    server = await loop.create_server(factory, *listen, backlog=1024)
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    async with server:
        await stopped.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--downstream", required=True, help="host:port")
    args = parser.parse_args()
    asyncio.run(serve(_host_port(args.listen), _host_port(args.downstream)))


if __name__ == "__main__":
    main()
