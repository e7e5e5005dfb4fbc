"""A real Postfix as the sending MTA: a queue flush through arproxy at its defaults.

Postfix (Debian's, a private instance started here) relays 50 queued messages to
arproxy, which relays them to smtp-sink. Postfix opens up to 20 parallel sessions
to one destination, starts the next as soon as it has its 250, and keeps idle
ones in its connection cache: none of the 50 may be deferred.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import pytest

from ..peerskip import unless_peer
from .conftest import MakeArproxy
from .peers import POSTFIX, PrivatePostfix, SmtpSink

pytestmark = unless_peer(
    os.geteuid() != 0 or not shutil.which(POSTFIX) or not os.path.isdir("/etc/postfix"),
    reason="a private Postfix needs root and Debian's postfix package",
)

MESSAGES = 50


@pytest.fixture
def postfix_factory() -> Iterator[list[PrivatePostfix]]:
    started: list[PrivatePostfix] = []
    yield started
    for instance in started:
        instance.close()


def test_postfix_queue_flush_through_arproxy_defaults_is_not_deferred(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, postfix_factory: list[PrivatePostfix]
) -> None:
    proxy = make_arproxy(smtp_sink.url)  # [limits] left at the defaults
    postfix = PrivatePostfix(relayhost=f"[127.0.0.1]:{proxy.port}")
    postfix_factory.append(postfix)
    for number in range(MESSAGES):
        postfix.enqueue(
            "alice@example.org",
            f"user{number}@example.com",
            b"From: alice@example.org\nSubject: flush %d\n\nbody %d\n" % (number, number),
        )
    postfix.start()  # picks up all 50 at once: a queue flush
    assert postfix.wait_for_empty_queue(timeout=120), postfix.log
    log = postfix.log
    assert len(re.findall(r"status=sent \(250 ", log)) == MESSAGES, log
    assert "status=deferred" not in log, log
    assert "Too many connections" not in proxy.log
    assert len(smtp_sink.messages()) == MESSAGES
    # Parallel sessions, as in a real flush (Postfix starts with 5 and goes up to 20).
    assert len(set(re.findall(r"postfix/smtp\[(\d+)\]", log))) > 1, log
