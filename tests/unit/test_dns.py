from __future__ import annotations

import asyncio

from arproxy.config import HostPort
from arproxy.dns import Resolver, Status, _server_text

from ..dnsserver import KnotServer


def test_server_text_for_c_ares() -> None:
    assert _server_text(HostPort("192.0.2.1", 53)) == "192.0.2.1"
    assert _server_text(HostPort("127.0.0.1", 5353)) == "127.0.0.1:5353"
    assert _server_text(HostPort("::1", 5353)) == "[::1]:5353"


def test_answers_are_cached_and_shared(dns_server: KnotServer) -> None:
    async def go() -> None:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        first, second = await asyncio.gather(
            resolver.lookup("sender.test", "TXT"), resolver.lookup("SENDER.test.", "TXT")
        )
        assert first == second
        assert first.status is Status.ANSWER
        assert resolver.queries_sent == 1, "one query for two concurrent askers"
        await resolver.lookup("sender.test", "TXT")
        assert resolver.queries_sent == 1, "then from the cache"
        await resolver.close()

    asyncio.run(go())


def test_a_cancelled_waiter_does_not_cancel_the_query_for_others(dns_server: KnotServer) -> None:
    async def go() -> None:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        first = asyncio.ensure_future(resolver.lookup("mail.sender.test", "A"))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(resolver.lookup("mail.sender.test", "A"))
        await asyncio.sleep(0)
        first.cancel()
        result = await second
        assert result.status is Status.ANSWER
        assert result.records == ("127.0.0.2",)
        await resolver.close()

    asyncio.run(go())


def test_failures_are_not_cached() -> None:
    async def go() -> None:
        server = KnotServer()
        resolver = Resolver([HostPort("127.0.0.1", server.port)], timeout=0.5)
        assert (await resolver.lookup("x.servfail.test", "A")).status is Status.TEMPFAIL
        assert (await resolver.lookup("x.servfail.test", "A")).status is Status.TEMPFAIL
        assert resolver.queries_sent == 2
        server.close()
        await resolver.close()

    asyncio.run(go())
