"""SIGHUP reloads the whole configuration file for new sessions, with one worker and
with two; open sessions keep the configuration they started with; an invalid file
changes nothing and is one log line; keys that need a restart keep their old value
and are named in one line."""

from __future__ import annotations

import os
import signal
import smtplib

import pytest

from .conftest import MakeArproxy
from .peers import Arproxy, SmtpSink, free_port, wait_for
from .test_checks_e2e import message_from
from .test_workers import WORKERS, pids_of, started_workers

OLD_DOMAINS = 'local = ["example.com", "example.net"]'
NEW_DOMAINS = 'local = ["example.com", "new.example"]'
LOADED = "reload: configuration "
FORGERY = message_from("CEO <ceo@sender.test>")  # dmarc=fail p=reject from 127.0.0.3


def forger(port: int) -> smtplib.SMTP:
    """A session from 127.0.0.3 (iprev and SPF fail, DMARC fail for sender.test)."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.3", 0))
    client.ehlo("liar.iprev.test")
    client.mail("ceo@sender.test")
    return client


def rewrite(proxy: Arproxy, text: str) -> None:
    proxy.config_path.write_text(text)
    proxy.process.send_signal(signal.SIGHUP)


def new_values(proxy: Arproxy) -> str:
    """The file with new local domains and [policy] reject_dmarc switched on."""
    text = proxy.config_path.read_text()
    assert OLD_DOMAINS in text and "[policy]" not in text
    return text.replace(OLD_DOMAINS, NEW_DOMAINS) + "\n[policy]\nreject_dmarc = true\n"


def check_new_session(port: int) -> None:
    """domains.local and the policy switch of the new file (RFC 5321 section 3.6.2:
    no relaying for foreign domains, 550 5.7.1; RFC 7489 section 6.7 + RFC 7372)."""
    with forger(port) as client:
        code, text = client.rcpt("bob@example.net")
        assert (code, text[:6]) == (550, b"5.7.1 "), (code, text)
        assert client.rcpt("bob@new.example")[0] == 250
        code, text = client.data(FORGERY)
        assert (code, text[:11]) == (550, b"5.7.1 DMARC"), (code, text)


@pytest.mark.parametrize("server", ["", WORKERS], ids=["one-process", "two-workers"])
def test_sighup_applies_the_new_file_to_new_sessions_only(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, server: str
) -> None:
    proxy = make_arproxy(smtp_sink.url, server=server)
    workers = set(started_workers(proxy.log).values())
    held = forger(proxy.port)  # opened under the old file
    assert held.rcpt("bob@example.net")[0] == 250
    rewrite(proxy, new_values(proxy))
    if workers:
        wait_for(lambda: set(pids_of(LOADED, proxy.log)) == workers, "both workers reload")
    else:
        wait_for(lambda: LOADED in proxy.log, "the reload")
    # The open session keeps its configuration: old domains, no DMARC rejection.
    assert held.rcpt("bob@example.com")[0] == 250
    code, text = held.data(FORGERY)
    assert code == 250, text
    held.quit()
    assert len(smtp_sink.messages()) == 1
    check_new_session(proxy.port)
    sessions = 1
    while workers and set(pids_of(r".*reject by policy \(dmarc", proxy.log)) != workers:
        assert sessions < 200, "one worker never took a session"
        check_new_session(proxy.port)
        sessions += 1
    assert len(smtp_sink.messages()) == 1
    assert "need(s) a restart" not in proxy.log


@pytest.mark.parametrize("server", ["", WORKERS], ids=["one-process", "two-workers"])
def test_an_invalid_file_changes_nothing_and_is_one_line(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, server: str
) -> None:
    proxy = make_arproxy(smtp_sink.url, server=server)
    good = proxy.config_path.read_text()
    rewrite(proxy, new_values(proxy).replace("reject_dmarc = true", "reject_dmarc = 'yes'"))
    wait_for(lambda: "keeping the old configuration" in proxy.log, "the refusal")
    with forger(proxy.port) as client:  # the old values, unchanged
        assert client.rcpt("bob@example.net")[0] == 250
        assert client.data(FORGERY)[0] == 250
    proxy.config_path.write_text(good)
    log = proxy.log
    refusals = [line for line in log.splitlines() if "keeping the old configuration" in line]
    assert len(refusals) == 1, refusals
    assert "reject_dmarc" in refusals[0]
    assert LOADED not in log and "reload: users file" not in log


def test_keys_that_need_a_restart_are_named_and_kept(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    proxy = make_arproxy(smtp_sink.url, server=WORKERS)
    text = new_values(proxy).replace(f"127.0.0.1:{proxy.port}", f"127.0.0.1:{free_port()}")
    rewrite(proxy, text.replace("workers = 2", "workers = 3"))
    workers = set(started_workers(proxy.log).values())
    wait_for(lambda: set(pids_of(LOADED, proxy.log)) == workers, "both workers reload")
    lines = [line for line in proxy.log.splitlines() if "need(s) a restart" in line]
    assert len(lines) == 1, lines  # the supervisor's, for every worker
    assert "server.listen, server.workers need(s) a restart" in lines[0]
    check_new_session(proxy.port)  # still on the old port, with the new domains
    assert len(started_workers(proxy.log)) == 2


def test_an_unusable_signing_key_at_reload_changes_nothing(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """A file that parses but names a DKIM signing key that cannot be read: the worker
    refuses it with one line and keeps its configuration (no half-applied reload)."""
    proxy = make_arproxy(smtp_sink.url)
    missing = proxy.config_path.parent / "no-such-key.pem"
    text = new_values(proxy) + (
        f'\n[dkim_sign]\ndomains = ["example.com"]\nselector = "s1"\nkey = "{missing}"\n'
    )
    rewrite(proxy, text)
    wait_for(lambda: "keeping the old configuration" in proxy.log, "the refusal")
    with forger(proxy.port) as client:  # the old values, unchanged
        assert client.rcpt("bob@example.net")[0] == 250
        assert client.data(FORGERY)[0] == 250
    refusals = [line for line in proxy.log.splitlines() if "keeping the old configuration" in line]
    assert len(refusals) == 1, refusals
    assert "no-such-key.pem" in refusals[0]
    assert LOADED not in proxy.log


def test_an_unusable_signing_key_is_refused_once_by_the_supervisor(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink
) -> None:
    """Two workers: the supervisor checks the signing keys the new file names (as at
    start-up) before signalling anyone, so the refusal is one line, from it, and a
    worker started after it -- the replacement of a killed one -- gets the last good
    configuration, starts and serves with the old values."""
    proxy = make_arproxy(smtp_sink.url, server=WORKERS)
    supervisor = proxy.process.pid
    missing = proxy.config_path.parent / "no-such-key.pem"
    rewrite(
        proxy,
        new_values(proxy)
        + f'\n[dkim_sign]\ndomains = ["example.com"]\nselector = "s1"\nkey = "{missing}"\n',
    )
    wait_for(lambda: "keeping the old configuration" in proxy.log, "the refusal")
    killed = started_workers(proxy.log)[0]
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: started_workers(proxy.log)[0] != killed, "worker 0 replaced")
    replacement = started_workers(proxy.log)[0]
    sessions = 0
    # A session at a time until the replacement relayed one; each sees the old values.
    while replacement not in pids_of(r"id=\S+ .* relayed: 250", proxy.log):
        with forger(proxy.port) as client:
            assert client.rcpt("bob@example.net")[0] == 250
            assert client.data(FORGERY)[0] == 250
        sessions += 1
        assert sessions < 400, "the replacement never served:\n" + proxy.log
    log = proxy.log
    refusals = [line for line in log.splitlines() if "keeping the old configuration" in line]
    assert len(refusals) == 1, refusals
    assert f"[{supervisor}]: supervisor: SIGHUP" in refusals[0]
    assert "no-such-key.pem" in refusals[0]
    assert LOADED not in log and "SIGHUP: every worker reloads" not in log
    assert log.count(" died ") == 1, log  # the kill; the replacement did not fail
