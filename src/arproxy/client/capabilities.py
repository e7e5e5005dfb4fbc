"""Reading AUTHSERV out of capability lists (draft-kucherawy-sender-auth-caps); pure.

SMTP (section 3): an EHLO keyword line, ``AUTHSERV``, ``AUTHSERV id`` (RFC 5321 4.1.1.1
keyword and parameter) or ``AUTHSERV=id`` (the draft's example). IMAP (section 4): a
CAPABILITY atom, ``AUTHSERV`` or ``AUTHSERV=id``. POP3 (section 5): a CAPA line (RFC 2449),
``AUTHSERV`` or ``AUTHSERV id``. The keyword in any case; an id must be an RFC 2045 token.
"""

from __future__ import annotations

from collections.abc import Sequence

from arproxy.authres import normalize_authserv_id
from arproxy.authres.chars import is_token_char

from .model import NOT_ADVERTISED, Authserv, ProbeProtocolError

_KEYWORD = "AUTHSERV"


def parse_ehlo_keywords(lines: Sequence[str]) -> Authserv:
    """The AUTHSERV keyword in EHLO keyword lines (the reply's lines after the first).

    ``AUTHSERV``, ``AUTHSERV id`` (RFC 5321 keyword and parameter) or ``AUTHSERV=id`` (the
    draft's example); the keyword in any case. Raises ProbeProtocolError for a malformed one.
    """
    return _combine([_keyword_line(line, equals_form=True) for line in lines])


def parse_imap_capabilities(atoms: Sequence[str]) -> Authserv:
    """The AUTHSERV capability among IMAP capability atoms: ``AUTHSERV`` or ``AUTHSERV=id``."""
    found: list[Authserv | None] = []
    for atom in atoms:
        name, equals, value = atom.partition("=")
        if name.upper() != _KEYWORD:
            found.append(None)
        elif equals:
            found.append(Authserv(True, _checked_id(value, atom)))
        else:
            found.append(Authserv(True))
    return _combine(found)


def parse_pop3_capa(lines: Sequence[str]) -> Authserv:
    """The AUTHSERV capability in CAPA lines (RFC 2449): ``AUTHSERV`` or ``AUTHSERV id``."""
    return _combine([_keyword_line(line, equals_form=False) for line in lines])


def is_plain_authserv_id(text: str) -> bool:
    """Whether ``text`` is an authserv-id as a capability carries it: an RFC 2045 token.

    Exactly the ids a field can carry unquoted, so exactly what the comparison can match.
    """
    return bool(text) and all(is_token_char(char) for char in text)


def _keyword_line(line: str, *, equals_form: bool) -> Authserv | None:
    words = line.split()
    if not words:
        return None
    name, equals, value = words[0].partition("=") if equals_form else (words[0], "", "")
    if name.upper() != _KEYWORD:
        return None
    parameters = [value, *words[1:]] if equals else words[1:]
    if len(parameters) > 1:
        raise ProbeProtocolError(f"AUTHSERV with more than one parameter: {line!r}")
    if not parameters:
        return Authserv(True)
    return Authserv(True, _checked_id(parameters[0], line))


def _checked_id(text: str, seen_in: str) -> str:
    """``text`` if it is an authserv-id the rewrite compares (an RFC 2045 token)."""
    if not is_plain_authserv_id(text):
        raise ProbeProtocolError(f"malformed authserv-id in {seen_in!r}")
    return text


def _combine(found: Sequence[Authserv | None]) -> Authserv:
    announced = [item for item in found if item is not None]
    if not announced:
        return NOT_ADVERTISED
    ids = [item.authserv_id for item in announced if item.authserv_id is not None]
    if len({normalize_authserv_id(authserv_id) for authserv_id in ids}) > 1:
        raise ProbeProtocolError(f"AUTHSERV announced with different ids: {', '.join(ids)}")
    return Authserv(True, ids[0] if ids else None)
