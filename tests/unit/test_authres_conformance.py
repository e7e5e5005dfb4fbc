"""The RFC 8601 conformance corpus: strict parse, lenient authserv-id, and authres differences.

The corpus is tests/fixtures/authres-corpus.jsonl (its README, for the format and the grammar
decisions, is tests/fixtures/authres-corpus.md), a copy of the shared corpus
../shared/conformance/authres-corpus.jsonl kept in the repository so that a clone tests
itself; where the shared one is beside the repository, the two must be equal.
ARPROXY_CONFORMANCE_CORPUS overrides the path. Disputed entries (the RFCs leave the answer
open) never decide a test: they are only checked to be handled without an unexpected
exception.
"""

import json
import os
from pathlib import Path
from typing import Any

import authres as authres_pkg  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from arproxy.authres import (
    AuthenticationResults,
    AuthResSyntaxError,
    FormatError,
    format_field,
    parse,
    recover_authserv_id,
)

_ENV_VAR = "ARPROXY_CONFORMANCE_CORPUS"
_FIXTURE = Path(__file__).parents[1] / "fixtures" / "authres-corpus.jsonl"
_SHARED = Path(__file__).parents[3] / "shared" / "conformance" / "authres-corpus.jsonl"
_CANDIDATE_PATHS = (_FIXTURE, _SHARED)


def _corpus_path() -> Path | None:
    if os.environ.get(_ENV_VAR):
        return Path(os.environ[_ENV_VAR])
    return next((path for path in _CANDIDATE_PATHS if path.is_file()), None)


def _load_corpus() -> list[dict[str, Any]]:
    path = _corpus_path()
    if path is None or not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


CORPUS = _load_corpus()
DECISIVE = [entry for entry in CORPUS if not entry["disputed"]]
DISPUTED = [entry for entry in CORPUS if entry["disputed"]]


def _by_id(entries: list[dict[str, Any]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("entry", entries, ids=[entry["id"] for entry in entries])


def _as_corpus_dict(header: AuthenticationResults) -> dict[str, Any]:
    """Our parse in the corpus's `expected` shape, the id lower-cased (compared without case)."""
    results = [
        {
            "method": res.method,
            "method_version": res.method_version,
            "result": res.result,
            "reason": res.reason,
            "properties": [
                {"ptype": prop.ptype, "property": prop.name, "value": prop.value}
                for prop in res.properties
            ],
        }
        for res in header.results
    ]
    return {
        "authserv_id": header.authserv_id.lower(),
        "version": header.version,
        "results": results,
    }


def _expected(entry: dict[str, Any]) -> dict[str, Any] | None:
    expected: dict[str, Any] | None = entry["expected"]
    if expected is None:
        return None
    return {**expected, "authserv_id": expected["authserv_id"].lower()}


def _our_outcome(field: str) -> dict[str, Any] | None:
    """Our parse in corpus shape, or None if the strict parser refuses the field."""
    try:
        return _as_corpus_dict(parse(field))
    except AuthResSyntaxError:
        return None


def test_corpus_is_present() -> None:
    where = os.environ.get(_ENV_VAR) or " or ".join(str(path) for path in _CANDIDATE_PATHS)
    assert CORPUS, f"conformance corpus not found at {where}"
    assert len({entry["id"] for entry in CORPUS}) == len(CORPUS), "duplicate entry ids"


def test_the_repository_copy_of_the_corpus_is_in_step_with_the_shared_one() -> None:
    """A clone has no ../shared/: the copy in tests/fixtures is what it tests against."""
    assert _FIXTURE.is_file(), "tests/fixtures/authres-corpus.jsonl is missing"
    if not _SHARED.is_file():
        pytest.skip(f"no shared corpus beside the repository ({_SHARED})")
    assert _FIXTURE.read_bytes() == _SHARED.read_bytes(), f"copy {_SHARED} to {_FIXTURE}"
    readme = _SHARED.with_name("README.md")
    copy = _FIXTURE.with_suffix(".md")
    assert copy.read_bytes() == readme.read_bytes(), f"copy {readme} to {copy}"


@_by_id(DECISIVE)
def test_strict_parse_matches_expected(entry: dict[str, Any]) -> None:
    if entry["strict_ok"]:
        assert _as_corpus_dict(parse(entry["field"])) == _expected(entry)
    else:
        with pytest.raises(AuthResSyntaxError):
            parse(entry["field"])


@_by_id(DECISIVE)
def test_lenient_authserv_id(entry: dict[str, Any]) -> None:
    assert recover_authserv_id(entry["field"]) == entry["lenient_authserv_id"]


@_by_id(DISPUTED)
def test_disputed_entry_is_handled_cleanly(entry: dict[str, Any]) -> None:
    """The RFCs leave these open: any answer will do, as long as it is a clean one."""
    try:
        header = parse(entry["field"])
    except AuthResSyntaxError as error:
        assert 0 <= error.position <= len(entry["field"])
    else:
        try:  # a valid but disputed field may be unwritable (a method named "none")
            format_field(header, allow_utf8=True)
        except FormatError as error:
            assert str(error)
    recovered = recover_authserv_id(entry["field"])
    assert recovered is None or isinstance(recovered, str)


@_by_id([entry for entry in DECISIVE if entry["strict_ok"]])
def test_valid_field_survives_formatting(entry: dict[str, Any]) -> None:
    """Writing a parsed field and reading it back gives the same results."""
    header = parse(entry["field"])
    written = format_field(header, allow_utf8=True)
    assert parse(written.split(":", 1)[1]) == header


@given(st.text(max_size=200))
def test_parser_only_raises_syntax_errors(text: str) -> None:
    try:
        parse(text)
    except AuthResSyntaxError as error:
        assert 0 <= error.position <= len(text)
    recover_authserv_id(text)


_FIELD_ALPHABET = st.sampled_from(
    [*'abc.-19 \t;=/@"\\()\r\n', "\r\n ", "none", "spf", "reason", "smtp.mailfrom", "é"]
)


@given(st.lists(_FIELD_ALPHABET, max_size=40).map("".join))
def test_parser_only_raises_syntax_errors_on_near_misses(text: str) -> None:
    try:
        parse(text)
    except AuthResSyntaxError as error:
        assert 0 <= error.position <= len(text)
    recover_authserv_id(text)


# --- differential test against the PyPI `authres` package (1.2.0) -----------------------------
# Every entry where `authres.all_features().parse_value` and our parser disagree, and why. Our
# parser follows the corpus expectations (tested above), so each line is an authres deviation
# from RFC 8601 as the corpus README describes them.

_QUOTED_ID = "refuses a quoted-string authserv-id"
_UTF8 = "refuses all UTF-8 (RFC 6532 allows it in quoted strings, comments, local-parts)"
_VERSION = "refuses an authres-version other than '1'"
_CFWS_AFTER_METHOD_VERSION = "refuses CFWS between the method-version and '=' (RFC B.7)"
_UNKNOWN_PTYPE = "silently drops properties whose ptype is not smtp/header/body/policy"
_ESCAPES = "keeps the backslashes of quoted-pairs in the value"
_DROPS_GARBAGE = "accepts the field and silently drops the text it cannot parse"
_BAD_KEYWORD = "accepts a Keyword outside Ldh-str ('_', '.', trailing '-')"
_TSPECIALS = "accepts tspecials ('/', '=') in an unquoted value"

KNOWN_AUTHRES_DIFFERENCES: dict[str, str] = {
    "s-009": _CFWS_AFTER_METHOD_VERSION,
    "s-026": _DROPS_GARBAGE + " (x-bits=2048: a property without ptype)",
    "s-027": _DROPS_GARBAGE + " (score=-100 without ptype; also '_' in policy.is_org)",
    "s-028": _DROPS_GARBAGE + " (x-bits=1024: a property without ptype)",
    "s-036": _TSPECIALS + " (header.b=iL/4Fh0q)",
    "s-045": "accepts '/' in an unquoted authserv-id (mail.example.com/1)",
    "s-071": _UNKNOWN_PTYPE + " (dns.zone)",
    "s-104": _CFWS_AFTER_METHOD_VERSION,
    "s-107": _QUOTED_ID,
    "s-108": _QUOTED_ID,
    "s-109": _QUOTED_ID,
    "s-110": _QUOTED_ID,
    "s-111": _QUOTED_ID,
    "s-113": _VERSION,
    "s-114": _VERSION,
    "s-118": "refuses a trailing-dot authserv-id",
    "s-128": _QUOTED_ID,
    "s-141": "accepts 'none' after a resinfo (returns a NoneAuthenticationResult among results)",
    "s-158": _ESCAPES,
    "s-159": _ESCAPES,
    "s-161": _TSPECIALS + " (unquoted base64)",
    "s-164": _TSPECIALS + " (unquoted base64)",
    "s-165": _TSPECIALS + " (unquoted base64)",
    "s-172": "accepts an empty pvalue",
    "s-180": "does not unfold a folded quoted-string (expects pre-unfolded input)",
    "s-188": _ESCAPES,
    "s-191": "refuses an empty quoted reason",
    "s-192": _DROPS_GARBAGE + " (a reasonspec after a propspec)",
    "s-193": _DROPS_GARBAGE + " (a second reasonspec)",
    "s-194": "matches 'reason' as a prefix: reason.code=3 is taken for a reasonspec",
    "s-198": _UNKNOWN_PTYPE + " (x-baz.qux)",
    "s-199": _UNKNOWN_PTYPE + " (dns.zone)",
    "s-208": _BAD_KEYWORD,
    "s-209": _BAD_KEYWORD,
    "s-218": _BAD_KEYWORD + " (dotted property a.b)",
    "s-220": _BAD_KEYWORD,
    "s-221": _BAD_KEYWORD + " (result pass.ok)",
    "s-223": _UTF8,
    "s-224": _UTF8,
    "s-225": _UTF8,
    "s-227": _UTF8,
    "s-229": _UTF8,
    "s-230": _UTF8,
    "s-244": _DROPS_GARBAGE + " (property without value)",
    "s-245": _DROPS_GARBAGE + " (property without ptype)",
    "s-247": _DROPS_GARBAGE + " (empty property)",
    "s-248": "accepts '==' and returns the value '=example.net'",
    "s-249": _DROPS_GARBAGE + " (unterminated quoted-string)",
    "s-254": _DROPS_GARBAGE + " (a word after the result)",
    "s-255": _DROPS_GARBAGE + " (a word after the propspec)",
    "s-256": _DROPS_GARBAGE + " (the value is cut at the space)",
    "s-258": _DROPS_GARBAGE + " (a second result without ';' is lost)",
    "s-260": "accepts '==' and returns the result '=pass'",
    "s-264": "accepts a bare LF as folding",
    "s-269": _DROPS_GARBAGE + " (ptype without property)",
    "s-270": _DROPS_GARBAGE + " (ptype and '.' only)",
    "s-271": _DROPS_GARBAGE + " (ptype.property without '=')",
    "s-272": _DROPS_GARBAGE + " ('@' without domain)",
    "s-273": "accepts 'a@' (local-part without domain) as a value",
    "s-281": _DROPS_GARBAGE + " (unterminated quoted-string)",
    "s-284": _DROPS_GARBAGE + " (unclosed comment)",
    "s-285": _DROPS_GARBAGE + " (unterminated quoted-string)",
    "s-292": "accepts 'a@b@c.example' (two '@')",
}


def _authres_outcome(field: str) -> dict[str, Any] | None:
    """authres's parse in corpus shape, or None if it refuses the field."""
    try:
        header = authres_pkg.all_features().parse_value(field)
    except authres_pkg.AuthResError:
        return None
    results: list[Any] = []
    for res in header.results:
        if isinstance(res, authres_pkg.NoneAuthenticationResult):
            results.append("none")
            continue
        properties = [
            {"ptype": prop.type, "property": prop.name, "value": prop.value}
            for prop in res.properties
        ]
        results.append(
            {
                "method": res.method,
                "method_version": res.version,
                "result": res.result,
                "reason": res.reason,
                "properties": properties,
            }
        )
    return {
        "authserv_id": header.authserv_id.lower(),
        "version": header.version,
        "results": results,
    }


@_by_id(DECISIVE)
def test_differences_with_authres_are_the_known_ones(entry: dict[str, Any]) -> None:
    ours, theirs = _our_outcome(entry["field"]), _authres_outcome(entry["field"])
    if entry["id"] in KNOWN_AUTHRES_DIFFERENCES:
        assert ours != theirs, f"authres now agrees; drop {entry['id']} from the known list"
    else:
        assert ours == theirs


def test_known_authres_differences_name_decisive_entries() -> None:
    decisive_ids = {entry["id"] for entry in DECISIVE}
    assert set(KNOWN_AUTHRES_DIFFERENCES) <= decisive_ids
