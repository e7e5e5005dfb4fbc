"""What the client side prints: a probe result for people, a trusted result as one line
or as JSON, with text from a server or a message escaped."""

from __future__ import annotations

import json

from arproxy.authres import Property, ResInfo, parse
from arproxy.client import ProbeResult, describe, result_as_dict, result_as_text


def test_descriptions_say_what_was_promised() -> None:
    def result(advertised: bool, authserv_id: str | None) -> ProbeResult:
        return ProbeResult("imap", "mx.example.com", 143, advertised, authserv_id, "pre-auth", ())

    assert describe(result(True, "example.com")) == (
        "mx.example.com:143 (imap, pre-auth): AUTHSERV, authserv-id example.com"
    )
    assert "after login (--user)" in describe(result(True, None))
    assert "no AUTHSERV" in describe(result(False, None))


def test_json_form_of_a_result() -> None:
    (res,) = parse(
        'example.com; dkim/1=fail reason="bad signature" header.d=sender.test header.i=@sender.test'
    ).results
    assert json.loads(json.dumps(result_as_dict(res))) == {
        "method": "dkim",
        "method_version": "1",
        "result": "fail",
        "reason": "bad signature",
        "properties": [
            {"ptype": "header", "property": "d", "value": "sender.test"},
            {"ptype": "header", "property": "i", "value": "@sender.test"},
        ],
    }


def test_text_form_escapes_what_a_terminal_would_obey() -> None:
    res = ResInfo(
        "dkim",
        "fail",
        reason="bad \x1b[2J signature",
        properties=(Property("header", "d", "sender.test"), Property("smtp", "auth", "a b")),
    )
    assert result_as_text(res) == (
        'dkim=fail reason="bad \\u001b[2J signature" header.d=sender.test smtp.auth="a b"'
    )
