from __future__ import annotations

import asyncio

import pytest

from arproxy.authres import AuthenticationResults, format_field, parse
from arproxy.checks.base import CheckContext, Value
from arproxy.checks.iprev import IprevResult, check_iprev
from arproxy.config import HostPort
from arproxy.dns import Resolver

from ...dnsserver import KnotServer


def run_iprev(port: int, ip: str, max_names: int = 10) -> IprevResult:
    async def go() -> IprevResult:
        resolver = Resolver([HostPort("127.0.0.1", port)], timeout=1.0)
        try:
            (result,) = await check_iprev(CheckContext(client_ip=ip), resolver, max_names=max_names)
        finally:
            await resolver.close()
        return result

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("ip", "value", "name"),
    [
        ("127.0.0.1", Value.PASS, "localhost.iprev.test"),
        ("127.0.0.2", Value.PASS, "mail.sender.test"),
        ("::ffff:127.0.0.2", Value.PASS, "mail.sender.test"),
        ("127.0.0.3", Value.FAIL, None),
        ("127.0.0.4", Value.PERMERROR, None),
        ("127.0.0.5", Value.TEMPERROR, None),
        ("127.0.0.6", Value.PASS, "c.iprev.test"),
    ],
)
def test_iprev_against_the_test_zones(
    dns_server: KnotServer, ip: str, value: Value, name: str | None
) -> None:
    result = run_iprev(dns_server.port, ip)
    assert (result.value, result.name) == (value, name)
    assert result.ip == ip.removeprefix("::ffff:")


def test_only_max_names_are_tried(dns_server: KnotServer) -> None:
    # 127.0.0.6 has three PTR names and only the last maps back.
    assert run_iprev(dns_server.port, "127.0.0.6", max_names=2).value is Value.FAIL


def test_server_down_is_temperror() -> None:
    server = KnotServer()
    port = server.port
    server.close()
    assert run_iprev(port, "127.0.0.2").value is Value.TEMPERROR


def test_resinfo_has_policy_iprev_and_the_name_in_a_comment() -> None:
    result = IprevResult(Value.PASS, "192.0.2.1", name="mail.example.org")
    field = format_field(AuthenticationResults("example.com", (result.to_resinfo(),)))
    assert "iprev=pass policy.iprev=192.0.2.1 (mail.example.org)" in field
    parsed = parse(field.split(":", 1)[1].rstrip("\r\n"))
    (resinfo,) = parsed.results
    assert (resinfo.method, resinfo.result, resinfo.properties[0].value) == (
        "iprev",
        "pass",
        "192.0.2.1",
    )


def test_hostile_ptr_name_is_not_written() -> None:
    result = IprevResult(Value.PASS, "192.0.2.1", name="evil) ; dkim=pass (x")
    field = format_field(AuthenticationResults("example.com", (result.to_resinfo(),)))
    assert "evil" not in field
