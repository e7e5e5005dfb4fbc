"""DKIM's own work done once: intake's header reading and line-end check, and each key
record read once per worker; every answer the same as the general path's.

- ``dkimpy_message`` on a ``Message`` whose lines all end in CRLF (intake's) skips the
  line-end normalisation, and gives what it gives for the same bytes read afresh;
- ``judge_key`` caches what a key record alone says (``_read_record``) and checks the
  signature against it every time: the same record judged for different signatures gives
  each its own answer (RFC 6376 section 6.1.2's checks, in its order).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy.checks.base import Value
from arproxy.checks.dkim import dkimpy_message
from arproxy.checks.dkim.keys import judge_key
from arproxy.checks.dkim.types import Unverifiable
from arproxy.header import Message, read_header

_LINE = st.sampled_from(
    [b"From: a@good.test", b"Subject : hi", b" folded", b"\tmore", b"not a field", b"", b"X: 1"]
)
_END = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n"])


@given(st.lists(st.tuples(_LINE, _END), max_size=8), st.binary(max_size=40))
def test_a_message_gives_dkimpy_what_its_bytes_give(
    lines: list[tuple[bytes, bytes]], body: bytes
) -> None:
    content = b"".join(line + end for line, end in lines) + body
    assert dkimpy_message(Message(content), read_header(content)) == dkimpy_message(
        content, read_header(content)
    )


def test_a_message_without_a_final_line_end_gets_dkimpys_crlf() -> None:
    content = b"From: a@good.test\r\nSubject: x"
    fields, body = dkimpy_message(Message(content), read_header(content))
    assert fields[-1][1] == b" x\r\n"  # as dkimpy's own reader adds it
    assert body == b""


def test_a_message_is_immutable() -> None:
    message = Message(b"From: a@good.test\r\n\r\nbody\r\n")
    with pytest.raises(AttributeError):
        message.header = read_header(b"")  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del message.crlf_only
    assert message.crlf_only is True
    assert Message(b"From: a@good.test\n\nbody\n").crlf_only is False


# A real 1024-bit RSA key (RFC 8301 section 3.2: the smallest accepted).
_P = (
    b"MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDwIRP/UC3SBsEmGqZ9ZJW3/DkMoGeLnQg1fWn7/zYtIxN2SnFC"
    b"jxOCKG9v3b4jYfcTNh5ijSsq631uBItLa7od+v/RtdC2UzJ1lWT947qR+Rcac2gbto/NMqJ0fzfVjH4OuKhitdY9"
    b"tf6mcwGjaNBcWToIMmPSPDdQPNUYckcQ2QIDAQAB"
)


def _sig(algorithm: bytes, identity: bytes | None = None) -> dict[bytes, bytes]:
    tags = {b"a": algorithm, b"d": b"good.test"}
    if identity is not None:
        tags[b"i"] = identity
    return tags


def _answer(record: bytes, sig: dict[bytes, bytes]) -> tuple[Value, str] | int:
    try:
        return judge_key(record, sig).keysize
    except Unverifiable as problem:
        return problem.value, problem.reason


@pytest.mark.parametrize("first", [0, 1])
def test_one_record_judged_for_several_signatures_answers_each(first: int) -> None:
    # Whichever signature comes first (fills the cache), each gets its own answer.
    record = b"v=DKIM1; k=rsa; t=s; h=sha256; p=" + _P
    cases = [
        (_sig(b"rsa-sha256"), 1024),
        (_sig(b"ed25519-sha256"), (Value.PERMERROR, "inappropriate key algorithm")),  # 6.1.2
        (_sig(b"rsa-sha1"), (Value.PERMERROR, "inappropriate hash algorithm")),  # 6.1.2
        (
            _sig(b"rsa-sha256", b"x@sub.good.test"),
            (Value.PERMERROR, "i= domain not allowed by key (t=s)"),
        ),  # 3.6.1
        (_sig(b"rsa-sha256", b"x@good.test"), 1024),
    ]
    order = cases[first:] + cases[:first]
    for _ in range(2):
        for sig, expected in order:
            assert _answer(record, sig) == expected


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"v=DKIM1; p=", "key revoked"),  # RFC 6376 3.6.1
        (b"k=rsa; v=DKIM1; p=" + _P, "key syntax error"),  # v= must come first
        (b"v=DKIM1; s=other; p=" + _P, "key not for e-mail"),  # 3.6.1 s=
        (b"v=DKIM1; p=AAAA", "key syntax error"),  # 6.1.2: not a key
        (b"garbage", "key syntax error"),
    ],
)
def test_a_bad_record_is_refused_every_time(record: bytes, reason: str) -> None:
    for _ in range(3):  # the cached problem is raised anew each time, never reused
        assert _answer(record, _sig(b"rsa-sha256")) == (Value.PERMERROR, reason)
