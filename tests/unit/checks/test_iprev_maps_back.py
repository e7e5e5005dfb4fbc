"""iprev's forward check (RFC 8601 section 3; RFC 5321 section 4.1.3): an answer that
is the client's address maps back, however the answer spells it."""

from __future__ import annotations

import ipaddress

import pytest

from arproxy.checks.iprev import _maps_back
from arproxy.dns import Lookup, Status


@pytest.mark.parametrize(
    ("client", "answers", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1",), True),  # the fast path: the same text
        ("192.0.2.1", ("192.0.2.9", "192.0.2.1"), True),
        ("192.0.2.1", ("192.0.2.10",), False),
        ("2001:db8::1", ("2001:DB8:0:0:0:0:0:1",), True),  # another spelling: parsed
        ("2001:db8::1", ("2001:db8::2", "junk"), False),
    ],
)
def test_an_answer_maps_back_by_address_not_by_spelling(
    client: str, answers: tuple[str, ...], expected: bool
) -> None:
    address = ipaddress.ip_address(client)
    rtype = "A" if address.version == 4 else "AAAA"
    lookup = Lookup("host.example", rtype, Status.ANSWER, records=answers)
    assert _maps_back(lookup, address, str(address)) is expected
