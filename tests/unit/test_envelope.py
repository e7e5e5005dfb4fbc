"""The MAIL and RCPT path syntax of RFC 5321 section 4.1.2 (arproxy.envelope)."""

from __future__ import annotations

import pytest

from arproxy.envelope import path_refusal
from arproxy.outcome import loggable_command

GOOD = [
    ("MAIL", "FROM:<alice@example.org>"),
    ("MAIL", "FROM:<>"),  # Reverse-path = Path / "<>"
    ("MAIL", "from:<alice@example.org> SIZE=10 BODY=8BITMIME"),
    ("MAIL", "FROM: <alice@example.org>"),  # tolerated (Postfix does)
    ("MAIL", 'FROM:<"a b>c"@example.org>'),  # quoted local part: space and ">" allowed
    ("MAIL", "FROM:<@relay.example:alice@example.org>"),  # A-d-l, must be accepted
    ("RCPT", "TO:<bob@example.com>"),
    ("RCPT", "TO:<Postmaster>"),
    ("RCPT", "TO:<bob@example.com>  NOTIFY=NEVER"),
    ("MAIL", "<alice@example.org>"),  # no FROM: left to aiosmtpd's 501 syntax reply
]
BAD = [
    ("MAIL", "FROM:<alice@example.org", "501 5.1.7"),
    ("MAIL", "FROM:alice@example.org", "501 5.1.7"),
    ("MAIL", "FROM:<alice@example.org>>", "501 5.1.7"),
    ("MAIL", "FROM:<<alice@example.org>", "501 5.1.7"),
    ("MAIL", "FROM:<alice@exa mple.org>", "501 5.1.7"),
    ("MAIL", "FROM:<alice@example.org>SIZE=1", "501 5.1.7"),
    ("MAIL", "FROM:<al\x00ice@example.org>", "501 5.1.7"),
    ("MAIL", 'FROM:<"alice@example.org>', "501 5.1.7"),  # unterminated quote
    ("RCPT", "TO:<>", "501 5.1.3"),  # RFC 5321 section 4.1.1.3: never null
    ("RCPT", "TO:<bob@example.com", "501 5.1.3"),
    ("RCPT", "TO:bob@example.com", "501 5.1.3"),
    ("RCPT", "TO:", "501 5.1.3"),
]


@pytest.mark.parametrize(("verb", "arg"), GOOD)
def test_paths_rfc_5321_allows(verb: str, arg: str) -> None:
    assert path_refusal(verb, arg) is None


@pytest.mark.parametrize(("verb", "arg", "expected"), BAD)
def test_paths_rfc_5321_refuses(verb: str, arg: str, expected: str) -> None:
    refusal = path_refusal(verb, arg)
    assert refusal is not None and str(refusal).startswith(expected)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\n", "AUTH PLAIN <redacted>"),
        (b"auth login YWxpY2U=\r\n", "auth login <redacted>"),
        (b"AUTH PLAIN\n", "AUTH PLAIN"),
        (b"MAIL FROM:<a@b>\n", "MAIL FROM:<a@b>"),
        (b"NOOP \x00\n", "NOOP \\x00"),
    ],
)
def test_commands_are_logged_without_auth_data(line: bytes, expected: str) -> None:
    # RFC 4954 section 4: the initial response and the continuation lines are
    # credentials (base64 is an encoding); neither is ever logged.
    assert loggable_command(line) == expected


def test_an_auth_continuation_line_is_all_secret() -> None:
    assert loggable_command(b"AGFsaWNlAHNlY3JldA==\n", auth_data=True) == "<redacted>"
