from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..dnsserver import KnotServer
from .peers import Arproxy, SmtpSink

pytestmark = pytest.mark.integration

CONFIG_TEMPLATE = """
[server]
listen = "127.0.0.1:@PORT@"
hostname = "mx.example.com"
authserv_id = "example.com"
shutdown_grace = 5.0
{server}
[relay]
downstream = "{downstream}"
connect_timeout = 3.0
timeout = {relay_timeout}

[domains]
local = ["example.com", "example.net"]

[dns]
nameservers = ["{nameserver}"]
timeout = 1.0
message_budget = 5.0
{policy}
[headers]
trusted_authserv_ids = [".trusted.example"]
{headers}

[limits]
{limits}

{extra}
"""


def arproxy_config(
    downstream: str,
    *,
    nameserver: str,
    server: str = "",
    headers: str = "",
    policy: str = "",
    limits: str = "",
    extra: str = "",
    relay_timeout: float = 10.0,
) -> str:
    if "workers" not in server:
        server = "workers = 1\n" + server  # one process unless a test is about workers
    return CONFIG_TEMPLATE.format(
        downstream=downstream,
        nameserver=nameserver,
        server=server,
        headers=headers,
        policy=policy,
        limits=limits,
        extra=extra,
        relay_timeout=relay_timeout,
    )


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[SmtpSink]:
    sink = SmtpSink(tmp_path)
    yield sink
    sink.close()


MakeArproxy = Callable[..., Arproxy]


@pytest.fixture
def make_arproxy(tmp_path: Path, dns_server: KnotServer) -> Iterator[MakeArproxy]:
    """Start arproxy subprocesses resolving through the test DNS server."""
    started: list[Arproxy] = []

    def start(downstream: str, **options: str | float) -> Arproxy:
        workdir = tmp_path / f"arproxy{len(started)}"
        workdir.mkdir()
        options.setdefault("nameserver", dns_server.address)
        text = arproxy_config(downstream, **options)  # type: ignore[arg-type]
        proxy = Arproxy(workdir, text)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        code = proxy.stop()
        assert code == 0, f"arproxy exited with {code}:\n{proxy.log}"
        assert "Traceback" not in proxy.log, proxy.log
