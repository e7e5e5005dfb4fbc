"""Attacks from a raw socket: smuggling, NUL, bad HELO, floods, limits, PROXY headers.

Each must get a clear reply and leave the listener serving the next client; the
smuggling tests use Postfix's smtp-sink downstream to count what got through.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import struct
import time

import pytest

from .conftest import MakeArproxy
from .peers import SmtpSink

# How long a Raw client waits for each reply: generous (DNS checks and the relay on a
# loaded machine), and far below the 300 s default command_timeout.
REPLY_WAIT = 30.0


class Raw:
    """A line-oriented raw SMTP client: what a hostile client can do."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=REPLY_WAIT, source_address=(source, 0)
        )
        self.stream = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all its lines), without line ends."""
        lines = []
        while True:
            line = self.stream.readline()
            if not line:
                raise ConnectionError("closed: " + repr(b"\n".join(lines)))
            lines.append(line.rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return b"\n".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def start_transaction(raw: Raw) -> None:
    assert raw.reply().startswith(b"220 ")
    assert raw.command(b"EHLO client.example.org").startswith(b"250-")
    assert raw.command(b"MAIL FROM:<alice@example.org>").startswith(b"250 ")
    assert raw.command(b"RCPT TO:<bob@example.com>").startswith(b"250 ")
    assert raw.command(b"DATA").startswith(b"354 ")


SMUGGLED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n"
END_VARIANTS = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
}


@pytest.mark.parametrize("end", END_VARIANTS.values(), ids=END_VARIANTS.keys())
def test_smuggling_is_refused_and_nothing_reaches_postfix(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, end: bytes
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    raw = Raw(proxy.port)
    start_transaction(raw)
    raw.send(b"Subject: smuggle\r\n\r\nfirst" + end + SMUGGLED + b".\r\n")
    assert raw.reply().startswith(b"550 5.5.2 ")
    assert raw.command(b"QUIT").startswith(b"221 ")
    raw.close()
    assert smtp_sink.messages() == []


@pytest.mark.parametrize("end", END_VARIANTS.values(), ids=END_VARIANTS.keys())
def test_smuggling_normalized_is_one_message_only(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, end: bytes
) -> None:
    proxy = make_arproxy(smtp_sink.url, limits='bare_newline = "normalize"')
    raw = Raw(proxy.port)
    start_transaction(raw)
    raw.send(b"Subject: smuggle\r\n\r\nfirst" + end + SMUGGLED + b".\r\n")
    assert raw.reply().startswith(b"250 ")
    raw.close()
    (only,) = smtp_sink.messages()
    assert only.rcpt_args == ["<bob@example.com>"], "no smuggled second transaction"
    assert b"smuggled" in only.message


def test_nul_in_data_is_refused(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url)
    raw = Raw(proxy.port)
    start_transaction(raw)
    raw.send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n")
    assert raw.reply().startswith(b"550 5.6.0 ")
    raw.close()
    assert smtp_sink.messages() == []


def test_eight_bit_header_is_refused_when_configured(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    # "reject" is no longer the default (see test_extensions for "accept").
    proxy = make_arproxy(smtp_sink.url, limits='eight_bit_header = "reject"')
    raw = Raw(proxy.port)
    start_transaction(raw)
    raw.send("Subject: caf\u00e9\r\n\r\nbody\r\n.\r\n".encode())
    assert raw.reply().startswith(b"550 5.6.0 ")
    raw.close()
    assert smtp_sink.messages() == []


@pytest.mark.parametrize("helo", [b"bad\rname", b"nul\x00name", b"x" * 300])
def test_invalid_helo_is_refused_and_session_continues(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, helo: bytes
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    raw = Raw(proxy.port)
    assert raw.reply().startswith(b"220 ")
    assert raw.command(b"EHLO " + helo).startswith(b"501 5.5.4 ")
    assert raw.command(b"EHLO client.example.org").startswith(b"250-")
    raw.close()


def test_long_line_and_pipelined_flood_then_next_client_is_served(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    raw = Raw(proxy.port)
    assert raw.reply().startswith(b"220 ")
    assert raw.command(b"NOOP " + b"x" * 5000).startswith(b"500 5.5.2 ")
    raw.send(b"NOOP\r\n" * 500)
    replies = [raw.reply() for _ in range(500)]
    assert all(r == b"250 2.0.0 OK" for r in replies)
    raw.close()
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=30) as client:
        assert (
            client.sendmail("a@example.org", ["b@example.com"], b"Subject: next\r\n\r\nok\r\n")
            == {}
        )


def test_connections_per_ip_are_limited(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url, limits="max_connections_per_ip = 2")
    first, second = Raw(proxy.port), Raw(proxy.port)
    assert first.reply().startswith(b"220 ") and second.reply().startswith(b"220 ")
    third = Raw(proxy.port)
    assert third.reply() == b"421 4.7.0 Too many connections from your address"
    other = Raw(proxy.port, source="127.0.0.9")
    assert other.reply().startswith(b"220 "), "another address is still served"
    for raw in (first, second, third, other):
        raw.close()


def test_idle_client_gets_421_on_timeout(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    # Not timed here (a loaded machine is slow): the reply comes within Raw's socket
    # timeout (REPLY_WAIT), far below the default command_timeout of 300 s, so it
    # fails if the configured 1 s were not the bound.
    proxy = make_arproxy(smtp_sink.url, limits="command_timeout = 1.0")
    raw = Raw(proxy.port)
    assert raw.reply().startswith(b"220 ")
    assert raw.reply().startswith(b"421 4.4.2 ")
    raw.close()


def test_data_has_its_own_idle_bound_and_then_commands_theirs_again(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """limits.data_timeout bounds the DATA transfer instead of command_timeout (the
    one idle timer re-armed when it fires before the later bound); after the
    reply, the command bound is back: an idle client is told 421 4.4.2 (RFC 5321
    section 4.5.3.2: a server times out an idle client, section 3.8: with 421)."""
    # data_timeout must exceed relay.timeout (10 s here) + dns.message_budget (5 s); a
    # 1 s relay timeout to make room would fail the relay itself on a loaded machine.
    proxy = make_arproxy(smtp_sink.url, limits="command_timeout = 1.0\ndata_timeout = 20.0")
    raw = Raw(proxy.port)
    start_transaction(raw)
    raw.send(b"From: alice@example.org\r\nSubject: slow\r\n\r\n")
    time.sleep(2.5)  # past command_timeout, well within data_timeout
    raw.send(b"body\r\n.\r\n")
    assert raw.reply().startswith(b"250 ")
    assert raw.reply().startswith(b"421 4.4.2 "), "idle after DATA: the command bound"
    raw.close()
    assert len(smtp_sink.messages()) == 1


def proxy_v2_header(source: str, port: int) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = (
        socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 25)
    )
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


@pytest.mark.parametrize(
    "header",
    [b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n", proxy_v2_header("127.0.0.2", 40000)],
    ids=["v1", "v2"],
)
def test_proxy_protocol_client_address_is_used(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, header: bytes
) -> None:
    proxy = make_arproxy(
        smtp_sink.url, server='proxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]'
    )
    raw = Raw(proxy.port)
    raw.send(header)
    start_transaction(raw)
    raw.send(b"From: alice@sender.test\r\nSubject: via proxy\r\n\r\nbody\r\n.\r\n")
    assert raw.reply().startswith(b"250 ")
    raw.close()
    (got,) = smtp_sink.messages()
    header_block = got.message.split(b"\n\n")[0]
    assert b"policy.iprev=127.0.0.2" in header_block
    assert b"([127.0.0.2])" in header_block  # our Received line names the real client
    assert "connect from 127.0.0.2 via proxy 127.0.0.1" in proxy.log


def test_proxy_protocol_refuses_untrusted_peers(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(
        smtp_sink.url, server='proxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]'
    )
    raw = Raw(proxy.port, source="127.0.0.3")
    with contextlib.suppress(ConnectionResetError):
        raw.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 25\r\n")
    # Closed before our header was even read (a reset) is also "no banner".
    with contextlib.suppress(ConnectionResetError):
        assert raw.stream.readline() == b"", "closed without a banner"
    raw.close()
    assert "connection not from a trusted proxy" in proxy.log


def test_ehlo_flood_is_cut_off(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url)
    raw = Raw(proxy.port)
    assert raw.reply().startswith(b"220 ")
    raw.send(b"EHLO flood.example.org\r\n" * 51)
    replies = [raw.reply() for _ in range(51)]
    assert all(r.startswith(b"250-") for r in replies[:50])
    assert replies[50] == b"421 4.7.0 EHLO sent too many times"
    assert raw.stream.readline() == b""
    raw.close()


def test_sender_with_a_control_character_is_refused_cleanly(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    raw = Raw(proxy.port)
    assert raw.reply().startswith(b"220 ")
    assert raw.command(b"EHLO client.example.org").startswith(b"250-")
    assert raw.command(b'MAIL FROM:<"a\tb"@example.org>').startswith(b"250 ")
    for _ in range(3):  # each attempt used to leave a downstream connection open
        assert raw.command(b"RCPT TO:<bob@example.com>").startswith(b"553 5.1.3 ")
    assert raw.command(b"QUIT").startswith(b"221 ")
    raw.close()
    assert smtp_sink.messages() == []


@pytest.mark.parametrize(
    "path",
    [b"<a@[1.2.3.4>", b"<a@[IPv6:::1>", b"<a@[>"],
    ids=["literal-without-bracket", "ipv6-literal-without-bracket", "empty-literal"],
)
def test_a_path_the_header_parser_chokes_on_is_a_clean_553(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, path: bytes
) -> None:
    """An address literal without its "]" breaks RFC 5321 section 4.1.2's grammar; the
    e-mail header parser aiosmtpd reads such a path with raises AttributeError on it.
    The client gets 553 5.1.3 (RFC 3463: bad destination/sender mailbox address syntax)
    for MAIL and for RCPT, the session goes on, and no traceback reaches the log."""
    proxy = make_arproxy(smtp_sink.url)
    raw = Raw(proxy.port)
    assert raw.reply().startswith(b"220 ")
    assert raw.command(b"EHLO client.example.org").startswith(b"250-")
    assert raw.command(b"MAIL FROM:" + path).startswith(b"553 5.1.3 ")
    assert raw.command(b"MAIL FROM:<alice@example.org>").startswith(b"250 ")
    assert raw.command(b"RCPT TO:" + path).startswith(b"553 5.1.3 ")
    assert raw.command(b"QUIT").startswith(b"221 ")
    raw.close()
    proxy.stop()
    assert "Traceback" not in proxy.log
    assert proxy.log.count("the e-mail header parser failed") == 2
    assert smtp_sink.messages() == []
