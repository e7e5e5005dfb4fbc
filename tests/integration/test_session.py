"""The session lifecycle against real clients: half-close, bare LF in commands,
long lines, a reply's log line, and the drain on SIGTERM.

arproxy runs as a subprocess in front of Postfix's smtp-sink; the clients are raw
sockets (what an MTA's pipelining and half-close look like on the wire) and
smtplib.
"""

from __future__ import annotations

import base64
import contextlib
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from arproxy.tls import make_self_signed
from arproxy.users import set_password

from .conftest import MakeArproxy
from .peers import Arproxy, SmtpSink, free_port

MESSAGE = b"From: alice@example.org\r\nSubject: half-close\r\n\r\nbody\r\n"


class Wire:
    """A client that speaks SMTP over plain TCP or TLS and can half-close like Exim.

    TLS runs on memory BIOs, so the client can send its close_notify and close
    its TCP side without waiting for the server's close_notify (what Exim does
    after a pipelined QUIT), then still read the replies.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._buffer = b""
        self._eof = False

    # --- TLS ---

    def start_tls(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.tls = context.wrap_bio(self._incoming, self._outgoing)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive_raw()
        self._flush()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive_raw(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    # --- lines ---

    def send(self, data: bytes) -> None:
        try:
            if self.tls is None:
                self.sock.sendall(data)
            else:
                self.tls.write(data)
                self._flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed; what it said before is still to be read

    def half_close(self, *, close_notify: bool = True) -> None:
        """Close our sending side: TLS close_notify (without waiting), then TCP FIN."""
        if self.tls is not None and close_notify:
            with contextlib.suppress(ssl.SSLWantReadError):
                self.tls.unwrap()  # the peer's close_notify is not awaited
            self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self) -> bool:
        if self._eof:
            return False
        if self.tls is None:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                self._eof = True
                return False
            self._buffer += data
            return True
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                if not self._receive_raw():
                    self._eof = True
                    return False
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                return False
            if not data:
                self._eof = True
                return False
            self._buffer += data
            return True

    def line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                rest, self._buffer = self._buffer, b""
                return rest
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.line()
            if not line:
                return b"\n".join(lines)  # closed
            lines.append(line)
            if line[3:4] != b"-":
                return b"\n".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def at_eof(self) -> bool:
        return self.reply() == b""

    def close(self) -> None:
        self.sock.close()


def open_transaction(wire: Wire, *, starttls: bool = False) -> None:
    if starttls:
        assert wire.command(b"EHLO client.example.org").startswith(b"250-")
        assert wire.command(b"STARTTLS").startswith(b"220 ")
        wire.start_tls()
    assert wire.command(b"EHLO client.example.org").startswith(b"250-")
    assert wire.command(b"MAIL FROM:<alice@example.org>").startswith(b"250 ")
    assert wire.command(b"RCPT TO:<bob@example.com>").startswith(b"250 ")
    assert wire.command(b"DATA").startswith(b"354 ")


@pytest.fixture
def cert_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_self_signed(cert, key, "mx.example.com")
    return cert, key


# --- section 1: a pipelined end of DATA and QUIT, then a half-close ---


def test_half_close_after_pipelined_dot_and_quit_gets_both_replies(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    # RFC 5321 section 3.8 / 4.1.1.10: the client may close its side after QUIT and
    # wait for the replies; the server answers every command it received.
    proxy = make_arproxy(smtp_sink.url)
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    open_transaction(wire)
    wire.send(MESSAGE + b".\r\nQUIT\r\n")
    wire.half_close()
    assert wire.reply().startswith(b"250 2.0.0 ")  # smtp-sink's own reply, passed on
    assert wire.reply().startswith(b"221 2.0.0 ")
    assert wire.at_eof()
    wire.close()
    assert len(smtp_sink.messages()) == 1


@pytest.mark.parametrize("close_notify", [True, False], ids=["close_notify", "tcp-fin-only"])
@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_half_close_over_tls_gets_both_replies(
    make_arproxy: MakeArproxy,
    smtp_sink: SmtpSink,
    cert_files: tuple[Path, Path],
    listener: str,
    close_notify: bool,
) -> None:
    cert, key = cert_files
    implicit_port = free_port()
    proxy = make_arproxy(
        smtp_sink.url,
        extra=f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        f'implicit_listen = "127.0.0.1:{implicit_port}"\n',
    )
    wire = Wire(implicit_port if listener == "implicit" else proxy.port)
    if listener == "implicit":
        wire.start_tls()
    assert wire.reply().startswith(b"220 ")
    open_transaction(wire, starttls=listener == "starttls")
    wire.send(MESSAGE + b".\r\nQUIT\r\n")
    wire.half_close(close_notify=close_notify)
    assert wire.reply().startswith(b"250 2.0.0 ")
    assert wire.reply().startswith(b"221 2.0.0 ")
    assert wire.at_eof()
    wire.close()
    assert len(smtp_sink.messages()) == 1
    assert "SSL connection is closed" not in proxy.log


def test_half_close_inside_data_relays_nothing_and_logs_it(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    # No end of data (RFC 5321 section 4.1.1.4): the message is incomplete.
    proxy = make_arproxy(smtp_sink.url)
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    open_transaction(wire)
    wire.send(MESSAGE)
    wire.half_close()
    assert wire.at_eof()
    wire.close()
    proxy.stop()
    assert smtp_sink.messages() == []
    assert re.search(
        r"id=\w+ client=127\.0\.0\.1 connection closed before the end of the transaction",
        proxy.log,
    )


def test_end_of_data_split_across_writes_is_found(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    # RFC 5321 section 4.5.2: the data ends at CRLF "." CRLF however the client's
    # writes cut it; a dot-stuffed line cut between its dots loses exactly one.
    proxy = make_arproxy(smtp_sink.url)
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    open_transaction(wire)
    writes = [MESSAGE + b".", b".dots\r", b"\n.", b"\r", b"\nQUIT\r\n"]
    for data in writes:
        wire.send(data)
        time.sleep(0.05)  # separate TCP segments: the server reads each on its own
    assert wire.reply().startswith(b"250 2.0.0 ")
    assert wire.reply().startswith(b"221 2.0.0 ")
    wire.close()
    proxy.stop()
    [message] = smtp_sink.messages()
    assert message.message.endswith(b"\nbody\n.dots\n")


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        ((b"z" * 900 + b"\r\n") * 3, b"552 5.3.4 "),  # over max_message_size
        (b"x" * 1200 + b"\r\n", b"500 5.5.2 "),  # over max_line_length (4.5.3.1.6)
    ],
    ids=["too-much-data", "line-too-long"],
)
def test_refused_data_then_the_pipelined_command_is_answered(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, body: bytes, refusal: bytes
) -> None:
    # The refusal comes after the end of the data (RFC 5321 section 4.2.5), and what
    # the client sent after it is read as its next command.
    proxy = make_arproxy(smtp_sink.url, limits="max_message_size = 2048")
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    open_transaction(wire)
    wire.send(b"Subject: big\r\n\r\n" + body + b".\r\nNOOP\r\n")
    assert wire.reply().startswith(refusal)
    assert wire.reply() == b"250 2.0.0 OK"
    open_transaction(wire)
    wire.send(MESSAGE + b".\r\nQUIT\r\n")
    assert wire.reply().startswith(b"250 2.0.0 ")
    assert wire.reply().startswith(b"221 2.0.0 ")
    wire.close()
    assert len(smtp_sink.messages()) == 1


# --- section 4: bare LF in the command phase ---


def test_bare_lf_in_a_command_is_refused_and_the_session_closed(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    # RFC 5321 section 2.3.8: command lines end in CRLF. Postfix 3.9 answers
    # "Error: bare <LF> received" and disconnects; so does arproxy.
    proxy = make_arproxy(smtp_sink.url)
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    wire.send(b"EHLO evil.example\nX-Injected: yes\r\n")
    assert wire.reply() == b"550 5.5.2 mx.example.com Error: bare <LF> received"
    assert wire.at_eof()
    wire.close()
    proxy.stop()
    assert "bare LF" in proxy.log


def test_bare_lf_in_an_auth_continuation_line_is_refused(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    users = tmp_path / "users"
    set_password(users, "alice", "correct horse")
    proxy = make_arproxy(
        smtp_sink.url, extra=f'[auth]\nusers_file = "{users}"\nallow_plaintext = true\n'
    )
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    assert wire.command(b"EHLO client.example.org").startswith(b"250-")
    assert wire.command(b"AUTH LOGIN").startswith(b"334 ")
    wire.send(base64.b64encode(b"alice") + b"\n")
    assert wire.reply() == b"550 5.5.2 mx.example.com Error: bare <LF> received"
    assert wire.at_eof()
    wire.close()


def test_bare_lf_in_commands_tolerated_with_normalize(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, limits='bare_newline = "normalize"')
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    wire.send(b"HELO evil.example\nNOOP\r\n")
    assert wire.reply() == b"250 mx.example.com"
    assert wire.reply() == b"250 2.0.0 OK"
    wire.close()


# --- section 1 and 5: line length and the log line of aiosmtpd's own replies ---


def send_message(proxy_port: int, body: bytes) -> bytes:
    wire = Wire(proxy_port)
    assert wire.reply().startswith(b"220 ")
    open_transaction(wire)
    wire.send(b"Subject: long\r\n\r\n" + body + b"\r\n.\r\n")
    reply = wire.reply()
    wire.close()
    return reply


def test_line_length_default_is_rfc_5321_998_octets(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    # RFC 5321 section 4.5.3.1.6: 998 octets of text plus CRLF.
    proxy = make_arproxy(smtp_sink.url)
    assert send_message(proxy.port, b"x" * 998).startswith(b"250 ")
    # A 998-octet text line starting with a dot: 999 octets on the wire, dot-stuffed.
    assert send_message(proxy.port, b".." + b"x" * 997).startswith(b"250 ")
    assert send_message(proxy.port, b"x" * 999).startswith(b"500 5.5.2 Line too long")
    # Far over: aiosmtpd's own refusal, which gets its log line too.
    assert send_message(proxy.port, b"x" * 5000).startswith(b"500 5.5.2 Line too long")
    proxy.stop()
    assert len(smtp_sink.messages()) == 2
    assert b"\n." + b"x" * 997 + b"\n" in smtp_sink.messages()[1].message
    lines = re.findall(r"id=\w+ client=127\.0\.0\.1 .*500 5\.5\.2 Line too long", proxy.log)
    assert len(lines) == 2


def test_line_length_is_an_option(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    proxy = make_arproxy(smtp_sink.url, limits="max_line_length = 2048")
    line = b"y" * 2048
    assert send_message(proxy.port, line).startswith(b"250 ")
    assert send_message(proxy.port, line + b"y").startswith(b"500 5.5.2 ")
    assert line in smtp_sink.messages()[0].message


def test_too_much_mail_data_gets_its_log_line(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, limits="max_message_size = 2048")
    assert send_message(proxy.port, b"z" * 900 + b"\r\n" + b"z" * 900 + b"\r\n" + b"z" * 900)[
        :9
    ] == (b"552 5.3.4")
    proxy.stop()
    assert re.search(r"id=\w+ client=127\.0\.0\.1 reply '552 5\.3\.4 ", proxy.log)


def test_size_counts_no_quoting_dots(make_arproxy: MakeArproxy, smtp_sink: SmtpSink) -> None:
    """RFC 1870 section 4: a message's size counts CRLFs, not "the SMTP DATA command's
    terminating dot or doubled quoting dots": a message of exactly the SIZE offered
    passes however many of its lines start with a dot; one octet more does not."""
    proxy = make_arproxy(smtp_sink.url, limits="max_message_size = 1024")
    dotted = [b"." + b"d" * 98] * 9
    for tail, expected in ((b"e" * 96, b"250 "), (b"e" * 97, b"552 5.3.4 ")):
        message = b"Subject: long\r\n\r\n" + b"\r\n".join([*dotted, tail]) + b"\r\n"
        assert len(message) == 1024 + len(tail) - 96
        stuffed = b"\r\n".join([*(b"." + line for line in dotted), tail])
        assert send_message(proxy.port, stuffed).startswith(expected)
    proxy.stop()
    assert len(smtp_sink.messages()) == 1
    assert b"\n." + b"d" * 98 + b"\n" in smtp_sink.messages()[0].message


def test_null_sender_is_logged_as_empty_path(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    assert wire.command(b"EHLO client.example.org").startswith(b"250-")
    assert wire.command(b"MAIL FROM:<>").startswith(b"250 ")
    assert wire.command(b"RCPT TO:<bob@elsewhere.example>").startswith(b"550 5.7.1 ")
    wire.close()
    proxy.stop()
    assert "from=<> to=<bob@elsewhere.example> reject" in proxy.log
    assert "<<>>" not in proxy.log


def test_quoted_at_in_a_local_recipient_says_what_is_refused(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    assert wire.command(b"EHLO client.example.org").startswith(b"250-")
    assert wire.command(b"MAIL FROM:<a@example.org>").startswith(b"250 ")
    reply = wire.command(b'RCPT TO:<"victim@evil.example"@example.com>')
    assert reply == b"550 5.7.1 Relaying denied: %, ! or @ in the local part of a local address"
    wire.close()


def test_unreachable_downstream_is_not_logged_as_a_refusal(make_arproxy: MakeArproxy) -> None:
    proxy = make_arproxy(f"smtp://127.0.0.1:{free_port()}")
    wire = Wire(proxy.port)
    assert wire.reply().startswith(b"220 ")
    assert wire.command(b"EHLO client.example.org").startswith(b"250-")
    assert wire.command(b"MAIL FROM:<a@example.org>").startswith(b"250 ")
    assert wire.command(b"RCPT TO:<b@example.com>").startswith(b"451 4.4.1 ")
    wire.close()
    proxy.stop()
    assert "downstream refused sender" not in proxy.log
    assert "not relayed: 451 4.4.1" in proxy.log


# --- section 2: the drain ---


class BusyClient(threading.Thread):
    """Never idle: sends its next MAIL in the same write as the end of the data
    (RFC 2920 pipelining), until arproxy refuses; records what it was told."""

    def __init__(self, port: int, number: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.number = number
        self.accepted = 0  # DATA replies 250
        self.final = b""  # the reply that ended the session
        self.error: AssertionError | OSError | None = None
        self.running = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except (AssertionError, OSError) as error:  # reported by the test
            self.error = error

    def _run(self) -> None:
        mail = b"MAIL FROM:<busy@example.org>\r\n"
        wire = Wire(self.port)
        assert wire.reply().startswith(b"220 ")
        assert wire.command(b"EHLO busy.example.org").startswith(b"250-")
        wire.send(mail)
        while (reply := wire.reply()).startswith(b"250 "):
            assert wire.command(b"RCPT TO:<bob@example.com>").startswith(b"250 ")
            assert wire.command(b"DATA").startswith(b"354 ")
            wire.send(b"Subject: busy %d\r\n\r\nbody\r\n.\r\n" % self.number + mail)
            data_reply = wire.reply()
            assert data_reply.startswith(b"250 "), data_reply
            self.accepted += 1
            self.running.set()
        self.final = reply
        assert wire.at_eof()
        wire.close()


def busy_clients_through_sigterm(proxy: Arproxy, count: int = 10) -> list[BusyClient]:
    """`count` clients that start a new transaction after each 250, then SIGTERM: arproxy
    exits 0, and each client's last reply is 421 4.3.2 (RFC 5321 section 3.8: 421 and
    close; Postfix's 4.3.2 "shutting down") with no error on its side."""
    clients = [BusyClient(proxy.port, n) for n in range(count)]
    for client in clients:
        client.start()
    for client in clients:
        assert client.running.wait(30)
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(60) == 0
    for client in clients:
        client.join(30)
        assert client.error is None, client.error
        assert client.final.startswith(b"421 4.3.2 "), client.final
    return clients


def test_drain_refuses_new_transactions_and_exits_when_in_flight_ones_are_done(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url)  # shutdown_grace = 5.0
    clients = busy_clients_through_sigterm(proxy)
    log = proxy.log
    assert "still busy" not in log, "the drain waited for the grace to run out"
    assert "never retrieved" not in log
    # Nothing stored without the client's 250: no duplicate once the sender retries.
    assert len(smtp_sink.messages()) == sum(client.accepted for client in clients)
