"""The SMTP relay's pool facing a downstream that says 421 on a reused connection
(RFC 5321 section 3.8: it closes; the transaction never started there), against a
scripted server on loopback (smtp-sink's -Q would refuse every connection alike)."""

from __future__ import annotations

import asyncio

from arproxy.config import Downstream, HostPort, parse_config
from arproxy.relay import SmtpRelay

RELAY_CONFIG = parse_config("[relay]\ntimeout = 2.0\nconnect_timeout = 2.0", "t").relay


async def scripted_server(
    refuse_mail_on_transaction: int, reply: bytes
) -> tuple[asyncio.Server, int, list[list[bytes]]]:
    """Each connection's commands; the connection's MAIL number
    `refuse_mail_on_transaction` (1-based) of the first connection gets `reply`,
    and the connection is closed."""
    sessions: list[list[bytes]] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands: list[bytes] = []
        sessions.append(commands)
        first = len(sessions) == 1
        writer.write(b"220 sink.test ESMTP\r\n")
        mails = 0
        while line := await reader.readline():
            commands.append(line)
            verb = line[:4].upper()
            if verb == b"MAIL":
                mails += 1
                if first and mails == refuse_mail_on_transaction:
                    writer.write(reply)
                    await writer.drain()
                    break
            if verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while await reader.readline() != b".\r\n":
                    pass
                commands.append(b"<message>")
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                break
            elif verb == b"EHLO":
                writer.write(b"250-sink.test\r\n250 PIPELINING\r\n")
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], sessions


def run(refuse_mail_on_transaction: int, reply: bytes) -> tuple[list[int], list[list[bytes]]]:
    async def go() -> tuple[list[int], list[list[bytes]]]:
        server, port, sessions = await scripted_server(refuse_mail_on_transaction, reply)
        relay = SmtpRelay(
            Downstream("smtp", HostPort("127.0.0.1", port)), RELAY_CONFIG, "mx.example.com"
        )
        codes = []
        for _ in range(2):
            opened = await relay.open("a@sender.test", [], "b@example.com")
            if opened.delivery is None:
                codes.append(opened.reply.code)
                continue
            assert (await opened.delivery.add_recipient("b@example.com")).is_success
            codes.append((await opened.delivery.send(b"Subject: t\r\n\r\nbody\r\n")).code)
            await opened.delivery.close()
        await relay.shutdown(2.0)
        server.close()
        await server.wait_closed()
        return codes, sessions

    return asyncio.run(go())


def verbs(commands: list[bytes]) -> list[bytes]:
    return [command[:4].upper() for command in commands]


def test_421_to_mail_on_a_reused_connection_starts_again_on_a_new_one() -> None:
    codes, sessions = run(2, b"421 4.4.2 sink.test closing: idle too long\r\n")
    assert codes == [250, 250]
    assert [verbs(s) for s in sessions] == [
        [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"<MES", b"MAIL"],
        [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"<MES", b"QUIT"],
    ]


def test_421_to_mail_on_a_new_connection_is_the_reply() -> None:
    """Nothing to fall back on: the client gets a 4xx (421 passed on as 451: it is
    not we who close), and the message is not retried here."""
    codes, sessions = run(1, b"421 4.3.2 sink.test shutting down\r\n")
    assert codes[0] == 451
    assert verbs(sessions[0]) == [b"EHLO", b"MAIL"]


def test_refusal_of_mail_on_a_reused_connection_is_not_retried() -> None:
    """Only the downstream's going away is retried; its 4xx/5xx to MAIL is an answer."""
    codes, sessions = run(2, b"452 4.3.1 sink.test insufficient storage\r\n")
    assert codes == [250, 452]
    assert len(sessions) == 1
