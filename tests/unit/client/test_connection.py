"""Targets and default ports of the probe (no network)."""

from __future__ import annotations

import pytest

from arproxy.client import default_port, parse_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("mail.example.com", ("mail.example.com", None)),
        ("mail.example.com:587", ("mail.example.com", 587)),
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("[2001:db8::25]:25", ("2001:db8::25", 25)),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
    ],
)
def test_targets(target: str, expected: tuple[str, int | None]) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize("target", ["host:", "host:smtp", "host:0", "host:65536", "[::1", "[::1]x"])
def test_bad_targets(target: str) -> None:
    with pytest.raises(ValueError, match=r"port|\[address\]"):
        parse_target(target)


def test_default_ports() -> None:
    assert [default_port("smtp", s) for s in ("plain", "starttls", "tls")] == [25, 25, 465]
    assert [default_port("imap", s) for s in ("plain", "starttls", "tls")] == [143, 143, 993]
    assert [default_port("pop3", s) for s in ("plain", "starttls", "tls")] == [110, 110, 995]
