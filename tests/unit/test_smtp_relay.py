"""SmtpRelay's dialogue with a downstream that misbehaves on cue, against a scripted
server on loopback (smtp-sink cannot answer garbage or close at a chosen command):
every downstream failure is a 4xx for our client, an unexpected 2xx/3xx is our local
error, and a connection is reused only when it is known to be between transactions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hypothesis import example, given
from hypothesis import strategies as st

from arproxy.config import Downstream, HostPort, parse_config
from arproxy.relay import SmtpRelay, set_origin, xtext
from arproxy.replies import LOCAL_ERROR, UNSENDABLE_ADDRESS

RELAY_CONFIG = parse_config("[relay]\ntimeout = 2.0\nconnect_timeout = 2.0", "t").relay
EHLO = b"250-sink.test\r\n250-PIPELINING\r\n250 XFORWARD NAME ADDR PORT PROTO HELO IDENT\r\n"
# (connection number, verb, how many of that verb on the connection so far) -> the reply,
# b"" to close the connection instead, None for the default.
Script = Callable[[int, bytes, int], bytes | None]


async def scripted_server(script: Script) -> tuple[asyncio.Server, int, list[list[bytes]]]:
    sessions: list[list[bytes]] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands: list[bytes] = []
        sessions.append(commands)
        number = len(sessions)
        counts: dict[bytes, int] = {}
        writer.write(b"220 sink.test ESMTP\r\n")
        while line := await reader.readline():
            commands.append(line)
            verb = line.split(b" ")[0].strip().upper()
            counts[verb] = counts.get(verb, 0) + 1
            reply = script(number, verb, counts[verb])
            if reply == b"":
                break
            if reply is None:
                reply = default_reply(verb)
            writer.write(reply)
            await writer.drain()
            if verb == b"DATA" and reply.startswith(b"354"):
                while await reader.readline() != b".\r\n":
                    pass
                commands.append(b"<message>")
                writer.write(b"250 2.0.0 queued\r\n")
            if verb == b"QUIT":
                break
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], sessions


def default_reply(verb: bytes) -> bytes:
    return {
        b"EHLO": EHLO,
        b"DATA": b"354 go ahead\r\n",
        b"QUIT": b"221 2.0.0 bye\r\n",
    }.get(verb, b"250 2.0.0 ok\r\n")


def transactions(
    script: Script, count: int = 2, recipient: str = "b@example.com"
) -> tuple[list[str], list[list[bytes]], int]:
    """`count` transactions in a row; the reply that ended each, every connection's
    commands, and how many connections were opened."""

    async def go() -> tuple[list[str], list[list[bytes]], int]:
        server, port, sessions = await scripted_server(script)
        relay = SmtpRelay(
            Downstream("smtp", HostPort("127.0.0.1", port)), RELAY_CONFIG, "mx.example.com"
        )
        set_origin(addr="192.0.2.1", port=4321, helo="c.example", esmtp=True, queue_id="Q1")
        outcomes = []
        for _ in range(count):
            opened = await relay.open("a@sender.test", [], recipient)
            if opened.delivery is None:
                outcomes.append(str(opened.reply))
                continue
            rcpt = await opened.delivery.add_recipient(recipient)
            if rcpt.is_success:
                outcomes.append(str(await opened.delivery.send(b"Subject: t\r\n\r\nbody\r\n")))
            else:
                outcomes.append(str(rcpt))
            await opened.delivery.close()
        await relay.shutdown(2.0)
        server.close()
        await server.wait_closed()
        return outcomes, sessions, relay.connections_opened

    return asyncio.run(go())


def verbs(commands: list[bytes]) -> list[bytes]:
    return [command.split(b" ")[0].strip().upper() for command in commands]


def on(connection: int, verb: bytes, occurrence: int, reply: bytes) -> Script:
    return lambda n, v, c: reply if (n, v, c) == (connection, verb, occurrence) else None


def test_a_clean_connection_carries_the_next_transaction() -> None:
    outcomes, sessions, opened = transactions(lambda *_: None)
    assert outcomes == ["250 2.0.0 queued"] * 2 and opened == 1
    assert verbs(sessions[0]) == [
        b"EHLO",
        *[b"XFORWARD", b"MAIL", b"RCPT", b"DATA", b"<MESSAGE>"] * 2,
        b"QUIT",
    ]


def test_eof_to_pipelined_xforward_on_a_reused_connection_starts_again() -> None:
    """RFC 5321 section 3.8: the downstream went away before this transaction began
    there; it starts again on a new connection, once."""
    outcomes, sessions, opened = transactions(on(1, b"XFORWARD", 2, b""))
    assert outcomes == ["250 2.0.0 queued"] * 2 and opened == 2
    assert verbs(sessions[1])[:3] == [b"EHLO", b"XFORWARD", b"MAIL"]


def test_421_to_pipelined_xforward_on_a_reused_connection_starts_again() -> None:
    outcomes, _, opened = transactions(on(1, b"XFORWARD", 2, b"421 4.4.2 idle too long\r\n"))
    assert outcomes == ["250 2.0.0 queued"] * 2 and opened == 2


def test_421_to_xforward_on_a_new_connection_is_a_4xx() -> None:
    outcomes, _, _ = transactions(on(1, b"XFORWARD", 1, b"421 4.3.2 going down\r\n"), count=1)
    assert outcomes[0].startswith("451 ")


def test_a_refused_xforward_costs_only_the_log_detail() -> None:
    outcomes, _, _ = transactions(on(1, b"XFORWARD", 1, b"550 5.7.1 not you\r\n"), count=1)
    assert outcomes == ["250 2.0.0 queued"]


def test_garbage_to_mail_is_a_4xx_and_the_connection_is_dropped() -> None:
    """Not a reply (RFC 5321 section 4.2): the dialogue is out of step, our client gets
    451 4.4.1, and the next transaction opens a new connection."""
    outcomes, sessions, opened = transactions(on(1, b"MAIL", 2, b"hello there\r\n"), count=3)
    assert outcomes[0] == "250 2.0.0 queued" and outcomes[2] == "250 2.0.0 queued"
    assert outcomes[1].startswith("451 4.4.1 ")
    assert opened == 2 and b"QUIT" not in verbs(sessions[0])


def test_eof_after_mail_was_accepted_is_never_retried() -> None:
    outcomes, sessions, opened = transactions(on(1, b"RCPT", 1, b""), count=1)
    assert outcomes[0].startswith("451 4.4.1 ") and opened == 1 and len(sessions) == 1


def test_unexpected_positive_reply_to_data_is_our_local_error() -> None:
    """250 where RFC 5321 section 4.3.2 has DATA answered 354: nothing was sent, the
    client keeps its message (451 4.3.0), and RSET makes the connection reusable."""
    outcomes, sessions, opened = transactions(on(1, b"DATA", 1, b"250 2.0.0 what\r\n"))
    assert outcomes == [str(LOCAL_ERROR), "250 2.0.0 queued"] and opened == 1
    assert b"RSET" in verbs(sessions[0])


def test_refusals_are_passed_on_with_421_as_451() -> None:
    outcomes, _, _ = transactions(on(1, b"RCPT", 1, b"550-5.1.1 no such\r\n550 5.1.1 user\r\n"))
    assert outcomes[0] == "550-5.1.1 no such\r\n550 5.1.1 user"
    outcomes, _, _ = transactions(on(1, b"DATA", 1, b"421 4.3.2 going down\r\n"), count=1)
    assert outcomes[0] == "451 4.3.2 going down"


def test_a_refused_mail_is_the_answer_not_the_pipelined_rcpts() -> None:
    """MAIL refused in the XFORWARD+MAIL+RCPT group: the RCPT's reply (a 503: no
    sender, RFC 5321 section 4.1.1.3) means nothing; the client gets MAIL's refusal,
    once, and nothing is retried or sent on."""

    def script(connection: int, verb: bytes, count: int) -> bytes | None:
        if (connection, verb) == (1, b"MAIL"):
            return b"553 5.1.8 sender refused\r\n"
        if (connection, verb) == (1, b"RCPT"):
            return b"503 5.5.1 need MAIL first\r\n"
        return None

    outcomes, sessions, opened = transactions(script, count=1)
    assert outcomes == ["553 5.1.8 sender refused"] and opened == 1
    assert verbs(sessions[0]) == [b"EHLO", b"XFORWARD", b"MAIL", b"RCPT"]


def test_the_pipelined_rcpt_is_sent_once() -> None:
    """The first recipient's RCPT went with MAIL: add_recipient takes its reply and
    sends no second RCPT for it."""
    outcomes, sessions, _ = transactions(lambda *_: None, count=1)
    assert outcomes == ["250 2.0.0 queued"]
    assert verbs(sessions[0]).count(b"RCPT") == 1


def test_control_characters_in_an_address_never_reach_the_downstream() -> None:
    outcomes, sessions, _ = transactions(lambda *_: None, count=1, recipient="b@x\r\nRSET")
    assert outcomes == [str(UNSENDABLE_ADDRESS)]
    assert b"RCPT" not in verbs(sessions[0])


def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    """smtp-sink shows the wire (tests/integration/test_smtp_client.py); here, that a
    421 to XFORWARD stops the commands after it."""

    def script(n: int, verb: bytes, c: int) -> bytes | None:
        if verb == b"EHLO":
            return b"250-sink.test\r\n250 XFORWARD ADDR\r\n"
        return b"421 4.3.2 going down\r\n" if verb == b"XFORWARD" else None

    outcomes, sessions, _ = transactions(script, count=1)
    assert outcomes[0].startswith("451 ")
    assert verbs(sessions[0]) == [b"EHLO", b"XFORWARD"]


def xtext_reference(value: str) -> str:
    """RFC 3461 section 4, octet by octet: xchar ("!" to "~" but "+" and "=") as
    itself, any other octet of the UTF-8 form as "+" and two upper-case hex digits."""
    out = []
    for octet in value.encode("utf-8"):
        xchar = 33 <= octet <= 126 and octet not in b"+="
        out.append(chr(octet) if xchar else "+" + bytes([octet]).hex().upper())
    return "".join(out)


@given(st.text() | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126)))
@example("192.0.2.1")  # the fast path: nothing to escape
@example("[UNAVAILABLE]")
@example("a+b=c")
@example("ipv6:2001:db8::1")
@example("héllo wörld")
@example("~!*,<>")
def test_xtext_fast_path_is_the_general_one(value: str) -> None:
    assert xtext(value) == xtext_reference(value)


def test_cancelled_while_the_downstream_holds_the_data_reply() -> None:
    """Cancelled (our client gone, shutdown) while the DATA reply is pending: its reply
    may still come, and would be read as the answer to a RSET, then a RSET's as MAIL's.
    So the connection is closed without another command and never pooled."""

    async def go() -> tuple[list[bytes], int]:
        received: list[bytes] = []

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 sink.test ESMTP\r\n")
            while line := await reader.readline():
                received.append(line)
                if line.startswith(b"EHLO"):
                    writer.write(b"250-sink.test\r\n250 PIPELINING\r\n")
                elif line.startswith(b"DATA"):
                    writer.write(b"354 go ahead\r\n")
                    while await reader.readline() != b".\r\n":
                        pass
                    await asyncio.sleep(0.5)  # the DATA reply, later than the cancel
                    writer.write(b"250 2.0.0 queued\r\n")
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
            writer.close()

        server = await asyncio.start_server(session, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        relay = SmtpRelay(
            Downstream("smtp", HostPort("127.0.0.1", port)), RELAY_CONFIG, "mx.example.com"
        )
        opened = await relay.open("a@sender.test", [], "b@example.com")
        assert opened.delivery is not None
        assert (await opened.delivery.add_recipient("b@example.com")).is_success
        sending = asyncio.ensure_future(opened.delivery.send(b"Subject: t\r\n\r\nbody\r\n"))
        await asyncio.sleep(0.1)
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await opened.delivery.close()
        await asyncio.sleep(0.6)  # the late DATA reply arrives meanwhile
        await relay.shutdown(2.0)
        server.close()
        await server.wait_closed()
        return received, len(relay._idle)

    received, idle = asyncio.run(go())
    assert [line.split(b" ")[0].strip() for line in received] == [
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"DATA",
    ]
    assert idle == 0


def test_first_recipient_refused_later_one_accepted_then_the_pooled_connection() -> None:
    """The first RCPT, pipelined with MAIL, refused; the next accepted: our client gets
    each downstream reply (RFC 5321 section 4.1.1.3: one reply per RCPT), DATA goes to
    the accepted recipient only (the downstream's own list), and the connection,
    between transactions after DATA (section 4.1.1.4), carries the next one."""

    def script(connection: int, verb: bytes, count: int) -> bytes | None:
        if (connection, verb, count) == (1, b"RCPT", 1):
            return b"550 5.1.1 no such user\r\n"
        return None

    async def go() -> tuple[list[str], list[list[bytes]], int]:
        server, port, sessions = await scripted_server(script)
        relay = SmtpRelay(
            Downstream("smtp", HostPort("127.0.0.1", port)), RELAY_CONFIG, "mx.example.com"
        )
        set_origin(addr="192.0.2.1", port=4321, helo="c.example", esmtp=True, queue_id="Q1")
        replies = []
        for recipients in (["x@example.com", "y@example.com"], ["z@example.com"]):
            opened = await relay.open("a@sender.test", [], recipients[0])
            assert opened.delivery is not None
            for recipient in recipients:
                replies.append(str(await opened.delivery.add_recipient(recipient)))
            replies.append(str(await opened.delivery.send(b"Subject: t\r\n\r\nbody\r\n")))
            await opened.delivery.close()
        await relay.shutdown(2.0)
        server.close()
        await server.wait_closed()
        return replies, sessions, relay.connections_opened

    replies, sessions, opened = asyncio.run(go())
    assert replies == [
        "550 5.1.1 no such user",
        "250 2.0.0 ok",
        "250 2.0.0 queued",
        "250 2.0.0 ok",
        "250 2.0.0 queued",
    ]
    assert opened == 1
    rcpts = [line for line in sessions[0] if line.startswith(b"RCPT")]
    assert rcpts == [
        b"RCPT TO:<x@example.com>\r\n",
        b"RCPT TO:<y@example.com>\r\n",
        b"RCPT TO:<z@example.com>\r\n",
    ]
    assert verbs(sessions[0]) == [
        *[b"EHLO", b"XFORWARD", b"MAIL", b"RCPT", b"RCPT", b"DATA", b"<MESSAGE>"],
        *[b"XFORWARD", b"MAIL", b"RCPT", b"DATA", b"<MESSAGE>", b"QUIT"],
    ]
