from __future__ import annotations

import pytest

from arproxy.policy import may_relay_to

LOCAL = ("example.com",)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("bob@example.com", True),
        ("bob@EXAMPLE.COM", True),
        ("bob@example.com.", True),
        ("Postmaster", True),
        ("bob@sub.example.com", False),
        ("bob@example.com.evil.net", False),
        ("bob@evil.net", False),
        ("bob", False),
        ("@example.com", False),
        ('"bob@example.com"@evil.net', False),
        ("victim%evil.net@example.com", False),
        ("evil.net!victim@example.com", False),
        ('"victim@evil.net"@example.com', False),
        ("first.last+tag@example.com", True),
    ],
)
def test_relay_control(address: str, allowed: bool) -> None:
    assert may_relay_to(address, LOCAL, authenticated=False) is allowed


def test_authenticated_clients_may_relay_anywhere() -> None:
    assert may_relay_to("bob@evil.net", LOCAL, authenticated=True)
