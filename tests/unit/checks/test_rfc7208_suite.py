"""The RFC 7208 test suite (tests/fixtures/rfc7208-tests.yml) run through arproxy's SPF check.

Each scenario's `zonedata` is served by a real Knot (one server per scenario, started when
the scenario's first test runs), and each test goes through `check_mailfrom` (or
`check_helo` when its MAIL FROM is empty, RFC 7208 section 2.4), exactly as the SMTP
session calls them. The result must be one the suite accepts, except for the tests listed
in `DIFFERENCES`, each with the value we give and why.

How the zone data is served:
- every name goes into one root zone ("."), so any name the data does not hold is NXDOMAIN;
- a record of type SPF is also served as TXT unless the name lists TXT records of its own
  (`TXT: NONE` meaning none): the suite's own rule for drivers; type SPF itself is never
  asked (RFC 7208 section 3.1);
- a TXT string longer than 255 octets is split into strings of 255 (RFC 7208 section 3.3);
- `TIMEOUT` on a name with no record we would serve becomes a zone Knot cannot load, which
  answers SERVFAIL: the same temperror as a timeout (section 4.4), without waiting; a name
  with data below such a name gets a zone of its own. On a name that has TXT records
  (spftimeout.example.net), only type SPF would time out, which we never ask.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from arproxy.checks.base import CheckContext, Value
from arproxy.checks.spf import SpfResult, check_helo, check_mailfrom
from arproxy.config import HostPort
from arproxy.dns import Resolver

from ...dnsserver import KnotServer

SUITE = Path(__file__).parents[2] / "fixtures" / "rfc7208-tests.yml"
SOA = "SOA ns.suite.invalid. hostmaster.suite.invalid. 1 3600 600 86400 60"
NS = "NS ns.suite.invalid."

# Where our result differs from the suite's, and why: test name -> (our value, reason).
# All three are arproxy's local `spf=policy` rule (checks/spf/rules.py; RFC 8601 section 2.7.2):
# a pass given by the `all` of the sender's own record authorizes every host on the
# Internet, so it is reported as policy and DMARC does not align on it.
_ALL_PASS = "local policy: a pass by the sender's own `all` is spf=policy"
DIFFERENCES: dict[str, tuple[Value, str]] = {
    "all-double": (Value.POLICY, f"{_ALL_PASS} (`v=spf1 all all`)"),
    "multispf2": (Value.POLICY, f"{_ALL_PASS} (the one TXT record is `v=spf1 +all`)"),
    "include-softfail": (
        Value.POLICY,
        f"{_ALL_PASS}: `include:ip6.example.com all`, the include gives softfail so does not "
        "match, and `all` gives the pass (the rule fires for `include:... all` too)",
    ),
}


def _scenarios() -> list[dict[str, Any]]:
    with SUITE.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


@dataclass(frozen=True)
class Case:
    scenario: int
    name: str
    helo: str
    host: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None


def _cases() -> Iterator[Case]:
    for index, scenario in enumerate(_scenarios()):
        for name, test in scenario["tests"].items():
            expected = test["result"]
            results = tuple(expected) if isinstance(expected, list) else (expected,)
            yield Case(
                index,
                name,
                str(test["helo"]),
                str(test["host"]),
                str(test["mailfrom"]),
                results,
                test.get("explanation"),
            )


CASES = list(_cases())


# --- zone files from the suite's zone data --------------------------------------------


def _absolute(name: str) -> str:
    """A name in master-file syntax (RFC 1035 section 5.1): every octet other than a
    letter, digit, "-" or "_" escaped as \\DDD, and a final dot."""
    labels = name.rstrip(".").split(".")
    return ".".join(_escaped(label.encode(), b"-_") for label in labels) + "."


def _escaped(octets: bytes, also_plain: bytes) -> str:
    return "".join(
        chr(b) if chr(b).isascii() and (chr(b).isalnum() or b in also_plain) else f"\\{b:03d}"
        for b in octets
    )


def _txt(value: str | list[str]) -> str:
    strings = [value] if isinstance(value, str) else value
    if not strings:
        return '""'  # an empty record: one empty string (a TXT holds at least one)
    chunks = []
    for text in strings:
        octets = text.encode("utf-8")
        for start in range(0, max(len(octets), 1), 255):
            chunks.append('"' + _escaped(octets[start : start + 255], b" -_.:=/+!%~,;@") + '"')
    return " ".join(chunks)


def _records(entries: list[Any]) -> list[str]:
    """The master-file records (type and data) of one name's entries."""
    own_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
    lines = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue  # TIMEOUT
        ((rtype, value),) = entry.items()
        if rtype == "SPF" and not own_txt:
            rtype = "TXT"  # the suite's rule: SPF data is served as TXT too
        if rtype == "TXT" and value != "NONE":
            lines.append(f"TXT {_txt(value)}")
        elif rtype in ("A", "AAAA"):
            lines.append(f"{rtype} {value}")
        elif rtype == "MX":
            preference, exchange = value
            lines.append(f"MX {preference} {_absolute(exchange)}")
        elif rtype in ("PTR", "CNAME"):
            lines.append(f"{rtype} {_absolute(value)}")
    return lines


def _zone_text(origin: str, records: dict[str, list[str]]) -> str:
    lines = ["$TTL 300", f"{origin} {SOA}", f"{origin} {NS}"]
    for owner, data in records.items():
        lines += [f"{owner} {rr}" for rr in data]
    return "\n".join(lines) + "\n"


def zones_of(zonedata: dict[str, list[Any]]) -> tuple[dict[str, str], tuple[str, ...]]:
    """(origin -> zone text, the origins to answer SERVFAIL) for one scenario."""
    records = {_absolute(name): _records(entries) for name, entries in zonedata.items()}
    timeouts = tuple(
        _absolute(name).rstrip(".")
        for name, entries in zonedata.items()
        if "TIMEOUT" in entries and not records[_absolute(name)]
    )
    root: dict[str, list[str]] = {}
    zones: dict[str, str] = {}
    for owner, data in records.items():
        if owner.rstrip(".") in timeouts or not data:
            continue
        if any(owner.lower().endswith("." + t.lower() + ".") for t in timeouts):
            zones[owner.rstrip(".")] = _zone_text(owner, {owner: data})
        else:
            root[owner] = data
    zones["."] = _zone_text(".", root)
    return zones, timeouts


class SuiteServers:
    """One Knot at a time, for the scenario being tested."""

    def __init__(self) -> None:
        self.scenarios = _scenarios()
        self.current: tuple[int, KnotServer] | None = None
        self.empty = Path(tempfile.mkdtemp(prefix="arproxy-rfc7208-"))

    def for_scenario(self, index: int) -> KnotServer:
        if self.current is not None and self.current[0] == index:
            return self.current[1]
        self.close()
        zones, timeouts = zones_of(self.scenarios[index]["zonedata"])
        server = KnotServer(zones, zone_dir=self.empty, servfail_zones=timeouts)
        self.current = (index, server)
        return server

    def close(self) -> None:
        if self.current is not None:
            self.current[1].close()
            self.current = None


@pytest.fixture(scope="module")
def servers() -> Iterator[SuiteServers]:
    suite = SuiteServers()
    yield suite
    suite.close()
    suite.empty.rmdir()


def run_case(port: int, case: Case) -> SpfResult:
    async def go() -> SpfResult:
        resolver = Resolver([HostPort("127.0.0.1", port)], timeout=1.0)
        ctx = CheckContext(client_ip=case.host, helo=case.helo, mail_from=case.mailfrom)
        check = check_mailfrom if case.mailfrom else check_helo
        try:
            (result,) = await check(ctx, resolver)
            # Again with the cache warm: evaluated on the loop thread from the cache alone
            # when it holds every record read (checks.spf.bridge.evaluate_cached), else in
            # the pool again; either way exactly the same result.
            (again,) = await check(ctx, resolver)
            # A third time: from the memo of cache-only evaluations when the second kept
            # its outcome (dns.AnswerMemo: every record it read is still the cached one),
            # and a fourth with the memo emptied, evaluated afresh: the same again.
            kept = len(resolver.memo)
            (third,) = await check(ctx, resolver)
            assert resolver.memo.hits == kept
            resolver.memo.clear()
            (fresh,) = await check(ctx, resolver)
        finally:
            await resolver.close()
        assert again == result
        assert third == fresh == result
        return result

    return asyncio.run(go())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_rfc7208_suite(servers: SuiteServers, case: Case) -> None:
    result = run_case(servers.for_scenario(case.scenario).port, case)
    if case.name in DIFFERENCES:
        value, _why = DIFFERENCES[case.name]
        assert result.value is value
        assert value.value not in case.results, "not a difference any more: remove it"
        return
    assert result.value.value in case.results
    # "DEFAULT" is the suite's word for the implementation's own explanation.
    if case.explanation not in (None, "DEFAULT") and result.value is Value.FAIL:
        assert result.reason == case.explanation


def test_suite_is_complete() -> None:
    """Every test of the suite runs (203 in release 2014.04 with the 2019.08 additions),
    and every listed difference names one of them."""
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) == 203
    assert set(DIFFERENCES) <= set(names)
