"""`[arc]` and `[dkim_sign]`: validation, one-line errors, defaults."""

from __future__ import annotations

import pytest

from arproxy.config import DKIM_SIGN_HEADERS, ConfigError, parse_config


def test_defaults_sign_nothing() -> None:
    config = parse_config("", "t")
    assert not config.arc.seal and config.dkim_sign.domains == ()
    # RFC 6376 section 5.4.1's set, From first.
    assert config.dkim_sign.headers == DKIM_SIGN_HEADERS and DKIM_SIGN_HEADERS[0] == "From"
    assert config.dkim_sign.canonicalization == "relaxed/relaxed"


def test_dkim_sign_section() -> None:
    config = parse_config(
        '[dkim_sign]\ndomains = ["Example.ORG."]\nselector = "S1"\nkey = "/k.pem"\n'
        'canonicalization = "relaxed/simple"\n',
        "t",
    )
    assert config.dkim_sign.domains == ("example.org",)
    assert config.dkim_sign.selector == "s1"
    assert str(config.dkim_sign.key) == "/k.pem"
    assert config.dkim_sign.canonicalization == "relaxed/simple"


def test_arc_section() -> None:
    config = parse_config(
        '[arc]\nseal = true\ndomain = "example.com"\nselector = "arc"\nkey = "/a.pem"\n', "t"
    )
    assert config.arc.seal and config.arc.domain == "example.com"
    assert config.arc.selector == "arc" and str(config.arc.key) == "/a.pem"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[dkim_sign]\ndomains = ["example.org"]\nkey = "/k"\n', "[dkim_sign] selector: required"),
        ('[dkim_sign]\ndomains = ["example.org"]\nselector = "s"\n', "[dkim_sign] key: required"),
        (
            '[dkim_sign]\ndomains = ["example.org"]\nselector = "s"\nkey = "/k"\n'
            'headers = ["Subject"]\n',
            "[dkim_sign] headers: must include From",
        ),
        (
            '[dkim_sign]\ndomains = ["example.org"]\nselector = "s"\nkey = "/k"\n'
            'headers = ["From", "Bad Name"]\n',
            "is not a field name",
        ),
        ('[dkim_sign]\ncanonicalization = "relaxed"\n', "is not one of"),
        ('[dkim_sign]\ndomains = ["not a domain"]\n', "is not a domain name"),
        ('[dkim_sign]\nselector = "s"\nsigner = "x"\n', "[dkim_sign] signer: unknown option"),
        ('[arc]\nseal = true\nselector = "arc"\nkey = "/k"\n', "[arc] domain: required"),
        (
            '[arc]\nseal = true\ndomain = "example.com"\nselector = "a b"\nkey = "/k"\n',
            "[arc] selector: 'a b' is not a selector",
        ),
    ],
)
def test_mistakes_are_one_line_errors(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t")
    assert error in str(caught.value)
    assert "\n" not in str(caught.value)
