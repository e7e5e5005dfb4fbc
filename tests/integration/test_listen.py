"""The listening sockets, as `ss` (iproute2) shows them to an administrator.

The accept queue of each listening socket is `service.LISTEN_BACKLOG` deep whether one
process listens or the supervisor binds for its workers: asyncio's `create_server`
calls listen() again on an inherited socket, with its own default of 100 unless told.
"""

from __future__ import annotations

import subprocess

import pytest

from arproxy.service import LISTEN_BACKLOG

from .conftest import MakeArproxy
from .peers import SmtpSink


def listen_backlogs(port: int) -> list[int]:
    """The backlog (ss' Send-Q of a listening socket) of every socket on 127.0.0.1:port."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(line.split()[2]) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("workers", [1, 2])
def test_every_listening_socket_has_the_backlog_arproxy_names(
    make_arproxy: MakeArproxy, smtp_sink: SmtpSink, workers: int
) -> None:
    proxy = make_arproxy(smtp_sink.url, server=f"workers = {workers}\n")
    assert LISTEN_BACKLOG != 100  # asyncio's default: the test tells them apart
    assert listen_backlogs(proxy.port) == [LISTEN_BACKLOG]
