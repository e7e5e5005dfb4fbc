"""DKIM hashing of a large message must not stall the other sessions' event loop.

Asserted by where the work runs, not by how long the loop stood still (no timed
assertion): every step that walks the whole message -- dkimpy's view of it
(`Verifier.__init__`) and each signature's hashing and RSA check (`Verifier._verify`) --
runs on a thread other than the loop's when the message is larger than
`dkimpy.INLINE_MAX_BYTES`, and on the loop's own thread when it is small (two thread
hops would cost more than the work).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import dkim
import pytest

from arproxy.checks.base import CheckContext, Value
from arproxy.checks.dkim import check, dkimpy
from arproxy.config import HostPort
from arproxy.dns import Resolver

from ...dnsserver import KnotServer

KEY = (Path(__file__).parents[2] / "fixtures" / "keys" / "rsa2048.pem").read_bytes()


def signed_message(body_lines: int) -> bytes:
    """A message signed three times by sender.test (three body hashes to compute)."""
    body = b"A line of a big message, with   some   spaces   to canonicalise.\r\n" * body_lines
    message = b"From: alice@sender.test\r\nSubject: big\r\n\r\n" + body
    signature = dkim.sign(
        message, b"s2048", b"sender.test", KEY, canonicalize=(b"relaxed", b"relaxed")
    )
    return signature * 3 + message


def threads_of_the_work(
    dns_server: KnotServer, message: bytes, monkeypatch: pytest.MonkeyPatch
) -> tuple[Value, list[str]]:
    """Run the check: its value, and each step with the thread it ran on (loop, other)."""
    steps: list[tuple[str, int]] = []
    init, verify = dkimpy.Verifier.__init__, dkimpy.Verifier._verify

    def recorded_init(self: dkimpy.Verifier, *args: Any, **kwargs: Any) -> None:
        steps.append(("read", threading.get_ident()))
        init(self, *args, **kwargs)

    def recorded_verify(self: dkimpy.Verifier, *args: Any) -> bool:
        steps.append(("verify", threading.get_ident()))
        return verify(self, *args)

    monkeypatch.setattr(dkimpy.Verifier, "__init__", recorded_init)
    monkeypatch.setattr(dkimpy.Verifier, "_verify", recorded_verify)

    async def go() -> tuple[Value, int]:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        try:
            results = await check(CheckContext(client_ip="127.0.0.2", message=message), resolver)
        finally:
            await resolver.close()
        assert all(result.value is results[0].value for result in results)
        return results[0].value, threading.get_ident()

    value, loop_thread = asyncio.run(go())
    return (
        value,
        [f"{step} {'loop' if ident == loop_thread else 'other'}" for step, ident in steps],
    )


def test_large_message_is_verified_off_the_event_loop(
    dns_server: KnotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = signed_message(80_000)  # about 5 MB
    assert not dkimpy.runs_inline(message)
    value, steps = threads_of_the_work(dns_server, message, monkeypatch)
    assert value is Value.PASS
    assert steps == ["read other"] + ["verify other"] * 3


def test_small_message_is_verified_on_the_loop(
    dns_server: KnotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = signed_message(20)  # about 1.3 KB: the test above can tell the two apart
    assert dkimpy.runs_inline(message)
    value, steps = threads_of_the_work(dns_server, message, monkeypatch)
    assert value is Value.PASS
    assert steps == ["read loop"] + ["verify loop"] * 3
