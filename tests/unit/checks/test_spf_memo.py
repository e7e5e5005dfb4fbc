"""The memo of cache-only SPF evaluations (checks.spf.bridge.evaluate_cached, dns.AnswerMemo).

The resolver's cache is filled by hand with the `Lookup`s a query would have cached, so each
test controls exactly which answers exist, when they expire and when they are replaced.
The reference is always a fresh evaluation of the same request against the same cache
with the memo bypassed (`_run_query` through a `CacheOnlyBridge`), which is what
`evaluate_cached` gave before the memo existed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arproxy.checks.spf import SpfRequest
from arproxy.checks.spf import bridge as spf_bridge
from arproxy.dns import NOT_A_DNS_NAME, AnswerMemo, Lookup, Resolver, Status

GOOD = "192.0.2.1"
OTHER = "192.0.2.2"
T = TypeVar("T")

# sender.test fails every host but GOOD and its HELO's address; the explanation (RFC 7208
# section 6.2) expands %{l}, %{i} and %{h} (section 7.3), so the outcome tells the
# request's local part, IP and HELO apart.
RECORDS: dict[tuple[str, str], tuple[str | bytes, ...]] = {
    ("sender.test", "TXT"): (b"v=spf1 ip4:192.0.2.1 a:%{h} exp=why.sender.test -all",),
    ("why.sender.test", "TXT"): (b"%{l} may not send from %{i} as %{h}",),
    ("mail.sender.test", "A"): ("192.0.2.2",),
    ("relay.sender.test", "A"): ("192.0.2.9",),
    ("mail.sender.test", "AAAA"): ("2001:db8::1",),
    ("relay.sender.test", "AAAA"): ("2001:db8::9",),
}


def answer(name: str, rtype: str, *records: str | bytes, ttl: int = 300) -> Lookup:
    if not records:
        return Lookup(name, rtype, Status.NXDOMAIN, reason="NXDOMAIN")
    return Lookup(name, rtype, Status.ANSWER, records, ttl=ttl)


def fill(resolver: Resolver, records: dict[tuple[str, str], tuple[str | bytes, ...]]) -> None:
    for (name, rtype), data in records.items():
        resolver._cache_put((name, rtype), answer(name, rtype, *data))


def with_resolver(body: Callable[[Resolver], T], *, memo_size: int = 4096) -> T:
    """Run `body` with a resolver (its cache filled from RECORDS) inside an event loop."""

    async def go() -> T:
        resolver = Resolver(memo_size=memo_size)
        fill(resolver, RECORDS)
        try:
            return body(resolver)
        finally:
            await resolver.close()

    return asyncio.run(go())


def fresh(resolver: Resolver, request: SpfRequest) -> tuple[str, str, str]:
    """A new cache-only evaluation, memo bypassed: the reference outcome."""
    return spf_bridge._run_query(spf_bridge.CacheOnlyBridge(resolver), request, 20.0)


def memoised(resolver: Resolver, request: SpfRequest) -> tuple[str, str, str] | None:
    return spf_bridge.evaluate_cached(resolver, request, 20.0)


def test_a_hit_gives_the_outcome_of_a_fresh_evaluation_and_reads_no_record() -> None:
    request = SpfRequest(OTHER, "alice", "sender.test", "relay.sender.test")

    def body(resolver: Resolver) -> None:
        first = memoised(resolver, request)
        assert len(resolver.memo) == 1 and resolver.memo.hits == 0
        again = memoised(resolver, request)
        assert resolver.memo.hits == 1
        assert first == again == fresh(resolver, request)
        assert first is not None and first[0] == "fail"
        assert first[1] == "alice may not send from 192.0.2.2 as relay.sender.test"

    with_resolver(body)


LOCALS = st.sampled_from(["alice", "bob", "bob+tag", "SRS0=x=y=z=bob"])
IPS = st.sampled_from([GOOD, OTHER, "192.0.2.9", "2001:db8::1"])
HELOS = st.sampled_from(["mail.sender.test", "relay.sender.test", "unknown.test"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(IPS, LOCALS, HELOS), min_size=1, max_size=12))
def test_every_answer_is_the_fresh_evaluations_however_requests_repeat(
    requests: list[tuple[str, str, str]],
) -> None:
    """Requests in any order, repeats included (RFC 7208 section 7.3: each field feeds a
    macro): each answer, from the memo or not, is what a fresh evaluation gives.
    unknown.test has no cached A record: that evaluation is not cache-only (None)."""

    def body(resolver: Resolver) -> None:
        for ip, local, helo in requests:
            request = SpfRequest(ip, local, "sender.test", helo)
            got = memoised(resolver, request)
            if helo == "unknown.test" and ip != GOOD:
                assert got is None
            else:
                assert got == fresh(resolver, request)
        distinct = {r for r in requests if r[2] != "unknown.test" or r[0] == GOOD}
        assert len(resolver.memo) == len(distinct)

    with_resolver(body)


def test_local_part_ip_and_helo_are_each_part_of_the_key() -> None:
    base = SpfRequest(OTHER, "alice", "sender.test", "relay.sender.test")
    variants = [
        base,
        SpfRequest(OTHER, "bob", "sender.test", "relay.sender.test"),
        SpfRequest("192.0.2.7", "alice", "sender.test", "relay.sender.test"),
        SpfRequest(OTHER, "alice", "sender.test", "mail.sender.test"),
    ]

    def body(resolver: Resolver) -> list[tuple[str, str, str] | None]:
        outcomes = [memoised(resolver, request) for request in variants]
        assert len(resolver.memo) == len(variants) and resolver.memo.hits == 0
        assert [memoised(resolver, request) for request in variants] == outcomes
        assert resolver.memo.hits == len(variants)
        return outcomes

    outcomes = with_resolver(body)
    assert outcomes[3] is not None and outcomes[3][0] == "pass"  # a:%{h} matched
    explanations = {o[1] for o in outcomes[:3] if o is not None}
    assert len(explanations) == 3  # %{l} and %{i} differ


def test_an_expired_record_invalidates_the_hit() -> None:
    request = SpfRequest(OTHER, "alice", "sender.test", "relay.sender.test")

    def body(resolver: Resolver) -> None:
        assert memoised(resolver, request) is not None
        key = ("why.sender.test", "TXT")
        _expires, found = resolver._cache[key]
        resolver._cache[key] = (time.monotonic() - 1.0, found)  # past its TTL
        # Not from the memo: evaluated again, and the explanation is no longer cached.
        assert memoised(resolver, request) is None
        assert resolver.memo.hits == 0 and len(resolver.memo) == 0

    with_resolver(body)


def test_a_replaced_record_invalidates_the_hit() -> None:
    """Same name, a new Lookup (asked again after expiry): the new record decides."""
    request = SpfRequest(OTHER, "alice", "sender.test", "relay.sender.test")

    def body(resolver: Resolver) -> None:
        before = memoised(resolver, request)
        assert before is not None and before[0] == "fail"
        fill(resolver, {("sender.test", "TXT"): (b"v=spf1 ip4:192.0.2.2 -all",)})
        after = memoised(resolver, request)
        assert after is not None and after[0] == "pass"
        assert resolver.memo.hits == 0
        assert after == fresh(resolver, request)
        # An equal record in a new Lookup also invalidates: identity, not equality.
        fill(resolver, {("sender.test", "TXT"): (b"v=spf1 ip4:192.0.2.2 -all",)})
        assert memoised(resolver, request) == after and resolver.memo.hits == 0

    with_resolver(body)


def test_the_time_macro_is_never_memoised() -> None:
    """%{t} (RFC 7208 section 7.3) in any record read, in either case, even where the
    evaluation never expands it: the outcome may depend on the clock, so nothing is kept."""
    request = SpfRequest(GOOD, "alice", "t.test", "relay.sender.test")
    cases = {
        "exp": {
            ("t.test", "TXT"): (b"v=spf1 exp=why.t.test -all",),
            ("why.t.test", "TXT"): (b"refused at %{t}",),
        },
        "upper": {("t.test", "TXT"): (b"v=spf1 ip4:192.0.2.1 exists:%{T}.x.test -all",)},
        "include": {
            ("t.test", "TXT"): (b"v=spf1 include:in.t.test -all",),
            ("in.t.test", "TXT"): (b"v=spf1 ip4:192.0.2.1 exists:%{t2}.x.test -all",),
        },
    }

    def body(resolver: Resolver) -> None:
        for records in cases.values():
            resolver.memo.clear()
            fill(resolver, records)
            first = memoised(resolver, request)
            assert first is not None and len(resolver.memo) == 0
            assert memoised(resolver, request) == first and resolver.memo.hits == 0

    with_resolver(body)


def test_the_time_macro_changes_the_explanation_with_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why %{t} is excluded: pyspf reads the clock at each evaluation."""
    request = SpfRequest(GOOD, "alice", "t.test", "relay.sender.test")
    records = {
        ("t.test", "TXT"): (b"v=spf1 exp=why.t.test -all",),
        ("why.t.test", "TXT"): (b"refused at %{t}",),
    }

    def body(resolver: Resolver) -> tuple[object, object]:
        fill(resolver, records)
        monkeypatch.setattr(spf_bridge.spf.time, "time", lambda: 1000.0)
        first = memoised(resolver, request)
        monkeypatch.setattr(spf_bridge.spf.time, "time", lambda: 2000.0)
        return first, memoised(resolver, request)

    first, second = with_resolver(body)
    assert first == ("fail", "refused at 1000", "-all")
    assert second == ("fail", "refused at 2000", "-all")


def test_a_spent_budget_is_never_memoised_nor_answered_from_the_memo() -> None:
    """RFC 7208 section 4.6.4: a spent query-time budget is temperror, by the clock."""
    request = SpfRequest(OTHER, "alice", "sender.test", "relay.sender.test")

    def body(resolver: Resolver) -> None:
        spent = spf_bridge.evaluate_cached(resolver, request, -1.0)
        assert spent is not None and spent[0] == "temperror"
        assert len(resolver.memo) == 0
        kept = memoised(resolver, request)
        assert kept is not None and kept[0] == "fail" and len(resolver.memo) == 1
        assert spf_bridge.evaluate_cached(resolver, request, -1.0) == spent
        assert resolver.memo.hits == 0

    with_resolver(body)


def test_a_hit_counts_the_lookups_the_evaluation_would_have_counted() -> None:
    """`Resolver.lookups` / `cache_hits` (metrics) move by the same amounts on a memo hit
    as on the evaluation it replaces."""
    request = SpfRequest(OTHER, "alice", "sender.test", "relay.sender.test")

    def body(resolver: Resolver) -> tuple[tuple[int, int], tuple[int, int]]:
        def counted(run: Callable[[], object]) -> tuple[int, int]:
            lookups, hits = resolver.lookups, resolver.cache_hits
            run()
            return resolver.lookups - lookups, resolver.cache_hits - hits

        evaluated = counted(lambda: memoised(resolver, request))
        from_memo = counted(lambda: memoised(resolver, request))
        assert resolver.memo.hits == 1
        return evaluated, from_memo

    evaluated, from_memo = with_resolver(body)
    assert evaluated == from_memo and evaluated[0] >= 3


def test_the_memo_is_a_bounded_lru() -> None:
    requests = [SpfRequest(OTHER, f"user{n}", "sender.test", "relay.sender.test") for n in range(5)]

    def body(resolver: Resolver) -> None:
        for request in requests[:3]:
            memoised(resolver, request)
        memoised(resolver, requests[0])  # used: now the most recent
        assert resolver.memo.hits == 1
        for request in requests[3:]:
            memoised(resolver, request)
        assert len(resolver.memo) == 3
        hits = resolver.memo.hits
        memoised(resolver, requests[0])  # kept
        assert resolver.memo.hits == hits + 1
        memoised(resolver, requests[1])  # the least recently used: evicted
        assert resolver.memo.hits == hits + 1
        assert len(resolver.memo) == 3

    with_resolver(body, memo_size=3)


def test_a_synthesised_nxdomain_is_stable_a_cached_answer_must_be_the_same_object() -> None:
    """`Resolver.still_answers`: a name no DNS can carry (RFC 1035 section 2.3.4) always
    gets the same NXDOMAIN, made anew, so it stays valid; a cached answer only while the
    cache holds that very object."""
    too_long = "x" * 64 + ".test"

    def body(resolver: Resolver) -> list[bool]:
        synthesised = resolver.cached(too_long, "A")
        assert synthesised is not None and synthesised.reason == NOT_A_DNS_NAME
        cached = resolver.cached("sender.test", "TXT")
        assert cached is not None
        reads: Iterable[tuple[str, str, Lookup]] = [
            (too_long, "A", synthesised),
            ("sender.test", "TXT", cached),
        ]
        outcomes = [resolver.still_answers(list(reads))]
        fill(resolver, {("sender.test", "TXT"): RECORDS[("sender.test", "TXT")]})
        outcomes.append(resolver.still_answers(list(reads)))
        forged = Lookup(too_long, "A", Status.NXDOMAIN, reason="NXDOMAIN")
        outcomes.append(resolver.still_answers([(too_long, "A", forged)]))
        return outcomes

    assert with_resolver(body) == [True, False, False]


def test_answer_memo_drops_an_entry_that_no_longer_validates() -> None:
    def body(resolver: Resolver) -> None:
        memo = AnswerMemo(resolver, size=2)
        read = resolver.cached("sender.test", "TXT")
        assert read is not None
        memo.put("k", "v", (("sender.test", "TXT", read),))
        assert memo.get("k") == "v"
        fill(resolver, {("sender.test", "TXT"): (b"v=spf1 -all",)})
        assert memo.get("k") is None and len(memo) == 0

    with_resolver(body)
