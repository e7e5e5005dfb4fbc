"""The SMTP relay's downstream connection pool (relay.pool_size, relay.pool_idle)
against Postfix's smtp-sink: connections are reused between transactions, a
pooled connection the downstream closed meanwhile costs no message, and no
message is ever sent twice (RFC 5321 section 3.8: a closed connection is a
transaction not started, which may be started again elsewhere)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from arproxy.config import Downstream, HostPort, RelayConfig
from arproxy.relay import SmtpRelay
from tests.integration.peers import SmtpSink

from .conftest import MakeArproxy

SENDER = "alice@sender.test"
RECIPIENT = "bob@example.com"


def message(number: int) -> bytes:
    header = f"Subject: pool {number}\r\nMessage-ID: <{number}@pool.test>\r\n"
    return f"{header}\r\nbody {number}\r\n".encode()


def relay_to(sink: SmtpSink, *, pool_size: int = 4, pool_idle: float = 30.0) -> SmtpRelay:
    downstream = Downstream("smtp", HostPort("127.0.0.1", sink.port), None)
    config = RelayConfig(downstream, 5.0, 10.0, pool_size=pool_size, pool_idle=pool_idle)
    return SmtpRelay(downstream, config, "mx.example.com")


async def deliver(relay: SmtpRelay, number: int) -> int:
    """One whole transaction; the DATA reply's code."""
    opened = await relay.open(SENDER, (), RECIPIENT)
    assert opened.delivery is not None, opened.reply
    rcpt = await opened.delivery.add_recipient(RECIPIENT)
    assert rcpt.code == 250, rcpt
    reply = await opened.delivery.send(message(number))
    await opened.delivery.close()
    return reply.code


def subjects(sink: SmtpSink) -> list[str]:
    found = []
    for delivered in sink.messages():
        for line in delivered.message.split(b"\n"):
            if line.startswith(b"Subject: "):
                found.append(line[9:].decode())
    return sorted(found)


def test_messages_share_one_connection(smtp_sink: SmtpSink) -> None:
    async def go() -> SmtpRelay:
        relay = relay_to(smtp_sink)
        for number in range(3):
            assert await deliver(relay, number) == 250
        (pooled,) = relay._idle
        assert pooled.client.is_connected and pooled.transactions == 3
        await relay.shutdown(5.0)  # at stop: QUIT, and the pool is empty
        assert not relay._idle and not pooled.client.is_connected
        return relay

    relay = asyncio.run(go())
    assert relay.connections_opened == 1
    assert subjects(smtp_sink) == ["pool 0", "pool 1", "pool 2"]


def test_pool_size_zero_opens_a_connection_per_message(smtp_sink: SmtpSink) -> None:
    async def go() -> SmtpRelay:
        relay = relay_to(smtp_sink, pool_size=0)
        for number in range(3):
            assert await deliver(relay, number) == 250
        await relay.shutdown(5.0)
        return relay

    assert asyncio.run(go()).connections_opened == 3
    assert len(smtp_sink.messages()) == 3


def test_downstream_restarted_between_messages(tmp_path: Path) -> None:
    """The pooled connection dies with the old sink; the loop has not yet seen its
    EOF when MAIL is written (the restart happens without yielding to it), so the
    failure shows at MAIL: the message goes over a new connection, once."""
    first = SmtpSink(tmp_path / "first")
    second: SmtpSink | None = None

    async def go() -> SmtpRelay:
        nonlocal second
        relay = relay_to(first)
        assert await deliver(relay, 1) == 250
        first.close()  # synchronous: the event loop runs nothing meanwhile
        second = SmtpSink(tmp_path / "second", port=first.port)
        assert await deliver(relay, 2) == 250
        await relay.shutdown(5.0)
        return relay

    try:
        relay = asyncio.run(go())
        assert second is not None
        assert relay.connections_opened == 2
        assert subjects(second) == ["pool 2"]
    finally:
        if second is not None:
            second.close()


def test_idle_connection_closed_by_the_downstream_is_not_used(tmp_path: Path) -> None:
    """smtp-sink's command timeout (-t 1) closes the pooled connection while idle."""
    sink = SmtpSink(tmp_path, ("-t", "1"))

    async def go() -> SmtpRelay:
        relay = relay_to(sink)
        assert await deliver(relay, 1) == 250
        await asyncio.sleep(2.5)
        assert await deliver(relay, 2) == 250
        await relay.shutdown(5.0)
        return relay

    try:
        relay = asyncio.run(go())
        assert relay.connections_opened == 2
        assert subjects(sink) == ["pool 1", "pool 2"]
    finally:
        sink.close()


def test_idle_connections_expire(smtp_sink: SmtpSink) -> None:
    async def go() -> SmtpRelay:
        relay = relay_to(smtp_sink, pool_idle=0.2)
        assert await deliver(relay, 1) == 250
        await asyncio.sleep(1.0)  # past pool_idle: QUIT sent, pool empty
        assert await deliver(relay, 2) == 250
        await relay.shutdown(5.0)
        return relay

    assert asyncio.run(go()).connections_opened == 2
    assert subjects(smtp_sink) == ["pool 1", "pool 2"]


def test_more_transactions_at_once_than_the_pool_holds(smtp_sink: SmtpSink) -> None:
    async def go() -> SmtpRelay:
        relay = relay_to(smtp_sink, pool_size=2)
        for batch in range(2):
            codes = await asyncio.gather(*(deliver(relay, batch * 6 + n) for n in range(6)))
            assert codes == [250] * 6
        await relay.shutdown(5.0)
        return relay

    relay = asyncio.run(go())
    # 6 at once need 6 connections; the second batch reuses the 2 the pool kept.
    assert relay.connections_opened == 6 + 4
    assert subjects(smtp_sink) == sorted(f"pool {n}" for n in range(12))


def test_abandoned_transaction_is_reset_then_reused(smtp_sink: SmtpSink) -> None:
    async def go() -> SmtpRelay:
        relay = relay_to(smtp_sink)
        opened = await relay.open(SENDER, (), RECIPIENT)
        assert opened.delivery is not None
        await opened.delivery.close()  # the client said RSET: RSET, 250, pooled
        assert await deliver(relay, 1) == 250
        await relay.shutdown(5.0)
        return relay

    assert asyncio.run(go()).connections_opened == 1
    assert subjects(smtp_sink) == ["pool 1"]


def test_reset_refused_connection_is_not_reused(tmp_path: Path) -> None:
    """smtp-sink -Q rset: 421 to RSET (the downstream closes, RFC 5321 3.8)."""
    sink = SmtpSink(tmp_path, ("-Q", "rset"))

    async def go() -> SmtpRelay:
        relay = relay_to(sink)
        opened = await relay.open(SENDER, (), RECIPIENT)
        assert opened.delivery is not None
        await opened.delivery.close()
        assert await deliver(relay, 1) == 250
        await relay.shutdown(5.0)
        return relay

    try:
        assert asyncio.run(go()).connections_opened == 2
        assert subjects(sink) == ["pool 1"]
    finally:
        sink.close()


def test_through_arproxy_pipelined_client_and_downstream_restart(
    make_arproxy: MakeArproxy, tmp_path: Path
) -> None:
    """arproxy end to end: a client pipelining MAIL, RCPT and DATA (RFC 2920) gets its
    three replies in order; after the downstream restarts in place (its pooled
    connection dead), the next message is still delivered, once."""
    sink = SmtpSink(tmp_path / "sink")
    restarted: SmtpSink | None = None
    proxy = make_arproxy(sink.url)
    try:
        for number in (1, 2):
            if number == 2:
                sink.close()
                restarted = SmtpSink(tmp_path / "restarted", port=sink.port)
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as client:
                replies = client.makefile("rb")
                assert replies.readline().startswith(b"220 ")
                client.sendall(b"EHLO client.example.org\r\n")
                while (line := replies.readline())[3:4] == b"-":
                    pass
                assert line.startswith(b"250 ")
                client.sendall(
                    b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
                )
                assert [replies.readline()[:4] for _ in range(3)] == [b"250 ", b"250 ", b"354 "]
                client.sendall(message(number) + b".\r\nQUIT\r\n")
                assert replies.readline().startswith(b"250 ")
                assert replies.readline().startswith(b"221 ")
        assert restarted is not None
        assert subjects(restarted) == ["pool 2"]
    finally:
        sink.close()
        if restarted is not None:
            restarted.close()


def test_a_second_close_never_touches_a_connection_another_transaction_holds(
    smtp_sink: SmtpSink,
) -> None:
    """close() is idempotent: once the connection is back in the pool it may carry the
    next transaction, and a second close() of the first must leave it alone."""

    async def go() -> None:
        relay = relay_to(smtp_sink)
        first = await relay.open(SENDER, (), RECIPIENT)
        assert first.delivery is not None
        assert (await first.delivery.add_recipient(RECIPIENT)).code == 250
        assert (await first.delivery.send(message(1))).code == 250
        await first.delivery.close()
        second = await relay.open(SENDER, (), RECIPIENT)  # the same pooled connection
        assert second.delivery is not None
        assert relay.connections_opened == 1
        await first.delivery.close()  # late, second call
        assert (await second.delivery.add_recipient(RECIPIENT)).code == 250
        assert (await second.delivery.send(message(2))).code == 250
        await second.delivery.close()
        await relay.shutdown(5.0)

    asyncio.run(go())
    assert subjects(smtp_sink) == ["pool 1", "pool 2"]
