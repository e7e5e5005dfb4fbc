"""The relay's own SMTP client against Postfix's smtp-sink, seen on the wire: a TCP
forwarder in between notes every read from each side, in order.

To a downstream that offers PIPELINING, XFORWARD and MAIL go in one write (RFC 2920
section 3.1: neither must end a group; Postfix XFORWARD_README: XFORWARD "may be
pipelined when the server supports ESMTP command pipelining"); to one that does not
(smtp-sink -p), MAIL waits for XFORWARD's reply (RFC 5321 section 4.3). Either way
the message arrives whole, dot-stuffing undone by the sink (RFC 5321 section 4.5.2).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from arproxy.config import Downstream, HostPort, RelayConfig
from arproxy.relay import SmtpRelay, set_origin
from tests.integration.peers import SinkMessage, sink

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: wire\r\n\r\n.leading dot\r\n..two\r\n.\r\nlast\r\n"


@dataclasses.dataclass
class Recorder:
    """Forwards loopback TCP to `target`; `events` holds ("client" | "sink", bytes)
    for each read, in the order they happened."""

    target: int
    events: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self._session, "127.0.0.1", 0)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(
            self._pump(reader, up_writer, "client"), self._pump(up_reader, writer, "sink")
        )

    async def _pump(
        self, source: asyncio.StreamReader, sink_: asyncio.StreamWriter, side: str
    ) -> None:
        while data := await source.read(65536):
            self.events.append((side, data))
            sink_.write(data)
            await sink_.drain()
        sink_.close()


def relay_through(tmp_path: Path, options: Sequence[str]) -> tuple[Recorder, list[SinkMessage]]:
    with sink(tmp_path / "sink", options) as downstream:

        async def go() -> Recorder:
            recorder = Recorder(downstream.port)
            server = await recorder.start()
            port = server.sockets[0].getsockname()[1]
            address = Downstream("smtp", HostPort("127.0.0.1", port), None)
            relay = SmtpRelay(address, RelayConfig(address, 5.0, 10.0), "mx.example.com")
            set_origin(
                addr="192.0.2.1", port=4321, helo="client.example.org", esmtp=True, queue_id="Q1"
            )
            opened = await relay.open("alice@example.org", (), "bob@example.com")
            assert opened.delivery is not None, opened.reply
            assert (await opened.delivery.add_recipient("bob@example.com")).code == 250
            assert (await opened.delivery.send(MESSAGE)).code == 250
            await opened.delivery.close()
            await relay.shutdown(5.0)
            server.close()
            return recorder

        recorder = asyncio.run(go())
        return recorder, downstream.messages()


def reads_from_client(recorder: Recorder) -> list[bytes]:
    return [data for side, data in recorder.events if side == "client"]


def test_xforward_mail_and_rcpt_share_one_write_when_pipelining_is_offered(
    tmp_path: Path,
) -> None:
    """RFC 2920 section 3.1: XFORWARD, MAIL and the first RCPT in one group, one round
    trip; the RCPT's reply is the one the client gets for its recipient."""
    recorder, delivered = relay_through(tmp_path, ())
    (group,) = [data for data in reads_from_client(recorder) if data.startswith(b"XFORWARD ")]
    lines = group.split(b"\r\n")
    assert lines[0].startswith(b"XFORWARD ") and b"ADDR=192.0.2.1" in lines[0]
    assert lines[1:] == [b"MAIL FROM:<alice@example.org>", b"RCPT TO:<bob@example.com>", b""]
    # No second RCPT for the same recipient: the pipelined one's reply was used.
    assert sum(data.count(b"RCPT TO:") for data in reads_from_client(recorder)) == 1
    (message,) = delivered
    assert message.message == MESSAGE.replace(b"\r\n", b"\n")


def test_xforward_then_mail_one_at_a_time_without_pipelining(tmp_path: Path) -> None:
    recorder, delivered = relay_through(tmp_path, ("-p",))
    sides = [(side, data) for side, data in recorder.events]
    (xforward,) = [i for i, (_, data) in enumerate(sides) if data.startswith(b"XFORWARD ")]
    (mail,) = [i for i, (_, data) in enumerate(sides) if data.startswith(b"MAIL ")]
    assert sides[xforward][1].endswith(b"\r\n") and sides[xforward][1].count(b"\r\n") == 1
    # The sink's reply to XFORWARD came in between: MAIL waited for it.
    between = [data for side, data in sides[xforward + 1 : mail] if side == "sink"]
    assert between and between[0].startswith(b"250 ")
    (rcpt,) = [i for i, (_, data) in enumerate(sides) if data.startswith(b"RCPT ")]
    assert rcpt > mail and any(side == "sink" for side, _ in sides[mail + 1 : rcpt])
    (message,) = delivered
    assert message.message == MESSAGE.replace(b"\r\n", b"\n")
