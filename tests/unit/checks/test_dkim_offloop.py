"""DKIM hashing of a large message must not stall the other sessions' event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dkim

from arproxy.checks.base import CheckContext, Value
from arproxy.checks.dkim import check
from arproxy.config import HostPort
from arproxy.dns import Resolver

from ...dnsserver import KnotServer

KEY = (Path(__file__).parents[2] / "fixtures" / "keys" / "rsa2048.pem").read_bytes()


def test_large_message_is_verified_off_the_event_loop(dns_server: KnotServer) -> None:
    body = b"A line of a big message, with   some   spaces   to canonicalise.\r\n" * 80_000
    message = b"From: alice@sender.test\r\nSubject: big\r\n\r\n" + body
    signature = dkim.sign(
        message, b"s2048", b"sender.test", KEY, canonicalize=(b"relaxed", b"relaxed")
    )
    signed = signature * 3 + message  # three signatures: three body hashes

    async def go() -> tuple[float, float, Value]:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        longest_gap = 0.0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal longest_gap
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                longest_gap = max(longest_gap, now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        started = time.monotonic()
        results = await check(CheckContext(client_ip="127.0.0.2", message=signed), resolver)
        took = time.monotonic() - started
        done.set()
        await tick
        await resolver.close()
        return longest_gap, took, results[0].value

    gap, took, value = asyncio.run(go())
    assert value is Value.PASS
    # On the loop, the loop would stand still for all of `took` (about a second here).
    # In worker threads it keeps running; what is left are single C-level passes of
    # dkimpy's canonicalisation that hold the GIL (a process pool would remove those).
    assert gap < took / 2, f"the event loop stalled {gap:.2f}s of {took:.2f}s"
