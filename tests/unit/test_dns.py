from __future__ import annotations

import asyncio
import socket

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


def test_names_c_ares_refuses_are_asked_through_the_same_cache(dns_server: KnotServer) -> None:
    """RFC 2181 section 11: a label is any octets; "+" and "=" (RFC 7208 section 7.1) go
    out through dnspython, to the same server, cached and shared like the others."""

    async def go() -> None:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        plus, again = await asyncio.gather(
            resolver.lookup("bob+tag._spf.plus.example", "A"),
            resolver.lookup("BOB+TAG._spf.plus.example.", "A"),
        )
        assert (plus.status, plus.records) == (Status.ANSWER, ("127.0.0.2",))
        assert again == plus
        srs = await resolver.lookup("srs0=ab12=tt=example.org=bob._spf.plus.example", "A")
        assert srs.records == ("127.0.0.2",)
        assert resolver.queries_sent == 2
        await resolver.lookup("bob+tag._spf.plus.example", "A")
        assert resolver.queries_sent == 2, "the second answer came from the cache"
        absent = await resolver.lookup("alice+tag._spf.plus.example", "A")
        nodata = await resolver.lookup("bob+tag._spf.plus.example", "TXT")
        failed = await resolver.lookup("a+b.servfail.test", "TXT")
        assert (absent.status, nodata.status, failed.status) == (
            Status.NXDOMAIN,
            Status.NODATA,
            Status.TEMPFAIL,
        )
        await resolver.close()

    asyncio.run(go())


def test_names_the_dns_cannot_carry_are_nxdomain_without_a_query(dns_server: KnotServer) -> None:
    """RFC 1035 section 2.3.4: labels of at most 63 octets, names of at most 255 on the
    wire (253 in text); an empty label is no name either."""

    async def go() -> None:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        for name in ["x" * 64 + ".test", ("a" * 62 + ".") * 4 + "test", "a..test", ""]:
            assert (await resolver.lookup(name, "A")).status is Status.NXDOMAIN
        assert resolver.queries_sent == 0
        longest = ("x" * 63 + ".") * 3 + "a" * 61  # 3 x 64 + 61 = 253
        assert len(longest) == 253
        assert (await resolver.lookup(longest, "A")).reason != "not a name the DNS can carry"
        assert resolver.queries_sent == 1
        await resolver.close()

    asyncio.run(go())


def test_dnspython_transport_gives_tempfail_when_no_server_answers() -> None:
    async def go() -> None:
        server = KnotServer()
        port = server.port
        server.close()
        resolver = Resolver([HostPort("127.0.0.1", port)], timeout=0.5)
        assert (await resolver.lookup("a+b.sender.test", "A")).status is Status.TEMPFAIL
        await resolver.close()

    asyncio.run(go())


def test_close_ends_the_queries_still_in_flight() -> None:
    """A shared query outlives its cancelled waiters; `close` must end it before the
    channel goes, or it asks a destroyed channel after shutdown (an unread error)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # receives, never answers
    silent.bind(("127.0.0.1", 0))

    async def go() -> list[asyncio.Future[object]]:
        resolver = Resolver([HostPort("127.0.0.1", silent.getsockname()[1])], timeout=30.0)
        waiter = asyncio.ensure_future(resolver.lookup("example.test", "A"))
        await asyncio.sleep(0.05)
        waiter.cancel()
        pending: list[asyncio.Future[object]] = list(resolver._inflight.values())
        assert pending and not any(task.done() for task in pending)
        await resolver.close()
        # Ended by close itself, not later by asyncio.run's clean-up of leftover tasks.
        assert all(task.done() for task in pending)
        return pending

    try:
        pending = asyncio.run(go())
    finally:
        silent.close()
    assert all(task.cancelled() for task in pending)


def test_a_cached_answer_and_a_name_no_dns_can_carry_count_as_before(
    dns_server: KnotServer,
) -> None:
    """The cache is read before the name is checked (only carried names are ever cached):
    a hit counts as a lookup and a hit, a name no DNS can carry (RFC 1035 2.3.4) is still
    NXDOMAIN without a query and counts as neither."""

    async def go() -> None:
        resolver = Resolver([HostPort("127.0.0.1", dns_server.port)], timeout=1.0)
        await resolver.lookup("sender.test", "TXT")
        assert (resolver.lookups, resolver.cache_hits, resolver.queries_sent) == (1, 0, 1)
        cached = resolver.cached("Sender.Test.", "TXT")
        assert cached is not None and cached.status is Status.ANSWER
        assert (resolver.lookups, resolver.cache_hits) == (2, 1)
        refused = resolver.cached("a..test", "TXT")
        assert refused is not None and refused.status is Status.NXDOMAIN
        assert (resolver.lookups, resolver.cache_hits, resolver.queries_sent) == (2, 1, 1)
        assert resolver.cached("other.test", "TXT") is None
        assert (resolver.lookups, resolver.cache_hits) == (3, 1)
        await resolver.close()

    asyncio.run(go())
