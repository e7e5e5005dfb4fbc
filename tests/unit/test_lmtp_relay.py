"""LMTP's one-reply-per-recipient DATA, against a scripted LMTP server on loopback
(Postfix's smtp-sink, used in the integration tests, answers all recipients alike)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from arproxy.config import Downstream, HostPort, parse_config
from arproxy.relay import LmtpRelay
from arproxy.replies import Reply

RELAY_CONFIG = parse_config("[relay]\ntimeout = 2.0\nconnect_timeout = 2.0", "t").relay


async def scripted_server(
    data_replies: Sequence[bytes], rcpt_delay: float = 0.0
) -> tuple[asyncio.Server, int, list[bytes]]:
    received: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 lmtp.test LMTP\r\n")
        while line := await reader.readline():
            received.append(line)
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while (body := await reader.readline()) != b".\r\n":
                    received.append(body)
                for reply in data_replies:  # one write each, as Dovecot sends them
                    writer.write(reply)
                    await writer.drain()
                    await asyncio.sleep(0.05)
            elif verb == b"RCPT" and rcpt_delay:
                await asyncio.sleep(rcpt_delay)
                writer.write(b"250 2.1.5 late ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(
                    b"250-lmtp.test\r\n250 PIPELINING\r\n"
                    if verb == b"LHLO"
                    else b"250 2.1.0 ok\r\n"
                )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


def deliver(data_replies: Sequence[bytes]) -> tuple[Reply, list[bytes]]:
    async def go() -> tuple[Reply, list[bytes]]:
        server, port, received = await scripted_server(data_replies)
        relay = LmtpRelay(
            Downstream("lmtp", HostPort("127.0.0.1", port)), RELAY_CONFIG, "mx.example.com"
        )
        opened = await relay.open("<>", [], "a@example.com")
        assert opened.delivery is not None, opened.reply
        for rcpt in ("a@example.com", "b@example.com"):
            assert (await opened.delivery.add_recipient(rcpt)).is_success
        reply = await opened.delivery.send(b"Subject: t\r\n\r\n.dot line\r\n")
        await opened.delivery.close()
        server.close()
        await server.wait_closed()
        return reply, received

    return asyncio.run(go())


def test_all_delivered_is_250() -> None:
    reply, received = deliver([b"250 2.0.0 a ok\r\n", b"250 2.0.0 b ok\r\n"])
    assert reply.code == 250
    assert b"MAIL FROM:<>\r\n" in received
    assert b"..dot line\r\n" in received, "dot-stuffed"


def test_a_temporary_failure_wins_over_a_permanent_one() -> None:
    reply, _ = deliver([b"550 5.1.1 a unknown\r\n", b"452 4.2.2 b over quota\r\n"])
    assert str(reply) == "452 4.2.2 b over quota"


def test_a_permanent_failure_wins_over_success() -> None:
    reply, _ = deliver([b"250 2.0.0 a ok\r\n", b"550 5.1.1 b unknown\r\n"])
    assert str(reply) == "550 5.1.1 b unknown"


def test_a_421_is_passed_on_as_451() -> None:
    reply, _ = deliver([b"250 2.0.0 a ok\r\n", b"421 4.3.2 going down\r\n"])
    assert str(reply) == "451 4.3.2 going down"


def test_a_late_reply_is_never_taken_for_the_next_one() -> None:
    """A RCPT reply later than relay.timeout: that RCPT is 451, and the connection is
    abandoned, so its late 250 cannot be read as the answer to a later command."""
    fast = dataclasses.replace(RELAY_CONFIG, timeout=0.3)

    async def go() -> list[str]:
        server, port, _ = await scripted_server([b"250 2.0.0 ok\r\n"], rcpt_delay=0.6)
        relay = LmtpRelay(Downstream("lmtp", HostPort("127.0.0.1", port)), fast, "mx.example.com")
        opened = await relay.open("<>", [], "a@example.com")
        assert opened.delivery is not None
        replies = [str(await opened.delivery.add_recipient("a@example.com"))]
        await asyncio.sleep(0.5)  # the late 250 arrives meanwhile
        replies.append(str(await opened.delivery.add_recipient("b@example.com")))
        replies.append(str(await opened.delivery.send(b"Subject: t\r\n\r\nbody\r\n")))
        await opened.delivery.close()
        server.close()
        await server.wait_closed()
        return replies

    first, second, data = asyncio.run(go())
    assert first.startswith("451 4.4.1 ")
    assert second.startswith("451 4.4.1 ")
    assert not data.startswith("250"), data
