"""The Authentication-Results formatter as it was before issue 9 (per-character checks,
a dataclasses.replace per glued ";"), kept verbatim as the oracle of
test_authres_format_oracle: the faster formatter must write the same bytes and raise the
same errors. Not used by arproxy itself."""

import re
from dataclasses import dataclass, replace

from arproxy.authres.chars import DOMAIN_NAME, KEYWORD, WSP, is_token_char, is_unwritable
from arproxy.authres.errors import FormatError
from arproxy.authres.model import AuthenticationResults, Property, ResInfo
from arproxy.idn import to_a_labels

FIELD_NAME = "Authentication-Results"
SOFT_LINE_LIMIT = 78  # RFC 5322 section 2.1.1: SHOULD, excluding the CRLF
HARD_LINE_LIMIT = 998  # RFC 5322 section 2.1.1: MUST, excluding the CRLF
_CRLF = "\r\n"
_RESINFO_FOLD = _CRLF + "\t"  # each resinfo starts a line
_INNER_FOLD = _CRLF + "\t  "  # a resinfo's own continuation lines are indented further
_DIGITS = re.compile(r"[0-9]+")
# The properties whose value is a domain or an address (RFC 8601 section 2.7, RFC 8616
# sections 4 to 6): without UTF-8 their U-labels are written as A-labels.
_DOMAIN_PROPERTIES = frozenset(
    {
        ("smtp", "mailfrom"),
        ("smtp", "helo"),
        ("smtp", "rcptto"),
        ("header", "from"),
        ("header", "sender"),
        ("header", "d"),
        ("header", "i"),
    }
)
# A dot-atom local-part of US-ASCII atext only: UTF-8 is always written quoted.
_ASCII_LOCAL_PART = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
)


@dataclass(frozen=True)
class _Piece:
    """An unbreakable run of text and how it joins the piece before it.

    ``fold_joint`` replaces ``joint`` when the line is folded before this piece; None means
    the piece can never start a continuation line. A comment is one unit of several pieces
    (``starts_unit`` False after the first): it moves to a new line whole if it fits there,
    and is folded at its own white space only if it does not.
    """

    text: str
    joint: str = " "
    fold_joint: str | None = _INNER_FOLD
    force_fold: bool = False
    starts_unit: bool = True


def format_field(header: AuthenticationResults, *, allow_utf8: bool = False) -> str:
    """The whole field, ``Authentication-Results: ...`` with CRLF line ends, folded.

    Each resinfo starts a continuation line; longer lines are folded between the parts of a
    resinfo (and at white space inside comments), never inside a token or quoted-string.
    ``allow_utf8`` is for the header of an SMTPUTF8 message (RFC 6532 section 3): values
    are written as they are, U-labels and UTF-8 local parts included (RFC 8616 section 3).
    For any other message, pass the header through ``with_a_labels`` first.

    Raise FormatError for a name that is not a keyword, a value that cannot be written
    (controls, CR, LF, DEL; other non-ASCII unless ``allow_utf8``), or a line that stays
    over 998.
    """
    writer = _Writer(allow_utf8)
    field = _fold(writer.pieces(header))
    for line in field.split(_CRLF):
        if len(line.encode("utf-8")) > HARD_LINE_LIMIT:
            raise FormatError(f"a line of the field cannot be folded below {HARD_LINE_LIMIT}")
    return field + _CRLF


def _fold(pieces: list[_Piece]) -> str:
    """Join pieces greedily, starting a continuation line where the soft limit requires."""
    out: list[str] = []
    line_octets = 0
    for piece, unit_octets in zip(pieces, _unit_widths(pieces), strict=True):
        needed = unit_octets if piece.starts_unit else _octets(piece.joint + piece.text)
        too_long = bool(out) and line_octets + needed > SOFT_LINE_LIMIT
        if piece.fold_joint is not None and (piece.force_fold or too_long):
            continuation = piece.fold_joint + piece.text
            out.append(continuation)
            line_octets = _octets(continuation) - len(_CRLF)
        else:
            out.append(piece.joint + piece.text)
            line_octets += _octets(piece.joint + piece.text)
    return "".join(out)


def _unit_widths(pieces: list[_Piece]) -> list[int]:
    """For each piece, the octets from it to the end of its unit, written on one line."""
    widths: list[int] = []
    running = 0
    for piece in reversed(pieces):
        running += _octets(piece.joint + piece.text)
        widths.append(running)
        if piece.starts_unit:
            running = 0
    return widths[::-1]


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


class _Writer:
    """Turns the model into pieces, validating and quoting as it goes."""

    def __init__(self, allow_utf8: bool) -> None:
        self.allow_utf8 = allow_utf8

    def pieces(self, header: AuthenticationResults) -> list[_Piece]:
        head = [_Piece(f"{FIELD_NAME}:", joint="", fold_joint=None)]
        head.append(_Piece(self._value(header.authserv_id, "authserv-id")))
        if header.version is not None:
            head.append(_Piece(_digits(header.version, "version")))
        if not header.results:
            return [*_end_with(head, ";"), _Piece("none")]
        pieces = _end_with(head, ";")
        for index, resinfo in enumerate(header.results):
            resinfo_pieces = self._resinfo(resinfo)
            if index < len(header.results) - 1:
                resinfo_pieces = _end_with(resinfo_pieces, ";")
            first = resinfo_pieces[0]
            resinfo_pieces[0] = replace(first, fold_joint=_RESINFO_FOLD, force_fold=True)
            pieces.extend(resinfo_pieces)
        return pieces

    def _resinfo(self, resinfo: ResInfo) -> list[_Piece]:
        method = _keyword(resinfo.method, "method")
        if method.lower() == "none":
            # "; none=pass" is a resinfo by the ABNF, but common readers take it for no-result.
            raise FormatError("a method may not be called 'none'")
        if resinfo.method_version is not None:
            method += "/" + _digits(resinfo.method_version, "method version")
        pieces = [_Piece(f"{method}={_keyword(resinfo.result, 'result')}")]
        pieces.extend(self._comment(resinfo.comment))
        if resinfo.reason is not None:
            pieces.append(_Piece("reason=" + self._value(resinfo.reason, "reason")))
        for prop in resinfo.properties:
            pieces.extend(self._propspec(prop))
        return pieces

    def _propspec(self, prop: Property) -> list[_Piece]:
        ptype = _keyword(prop.ptype, "ptype")
        name = _keyword(prop.name, "property")
        value = self._value(prop.value, f"{ptype}.{name}", address_allowed=True)
        return [_Piece(f"{ptype}.{name}={value}"), *self._comment(prop.comment)]

    def _value(self, value: str, what: str, *, address_allowed: bool = False) -> str:
        """A token if possible, else (for a pvalue) a plain address, else a quoted-string."""
        self._check_writable(value, what)
        if value and all(is_token_char(char) for char in value):
            return value
        if address_allowed and _is_plain_address(value):
            return value
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'

    def _comment(self, comment: str | None) -> list[_Piece]:
        """A comment, split at its white space so that long ones can be folded."""
        if comment is None:
            return []
        self._check_writable(comment, "comment")
        escaped = re.sub(r"([()\\])", r"\\\1", comment)
        return _split_at_white_space(f"({escaped})")

    def _check_writable(self, text: str, what: str) -> None:
        for char in text:
            if is_unwritable(char):
                raise FormatError(f"{what} contains {char!r}, which no quoting can carry")
            if not (char.isascii() or self.allow_utf8):
                raise FormatError(f"{what} contains non-ASCII text and UTF-8 is not allowed")


def _split_at_white_space(comment: str) -> list[_Piece]:
    """Pieces of a comment; a fold goes before a WSP that follows non-WSP and keeps that WSP."""
    pieces: list[_Piece] = []
    start = 0
    joint, fold_joint = " ", _INNER_FOLD
    for pos in range(1, len(comment)):
        if comment[pos] in WSP and comment[pos - 1] not in WSP:
            pieces.append(_Piece(comment[start:pos], joint, fold_joint, starts_unit=not pieces))
            joint, fold_joint = comment[pos], _CRLF + comment[pos]
            start = pos + 1
    pieces.append(_Piece(comment[start:], joint, fold_joint, starts_unit=not pieces))
    return pieces


def _end_with(pieces: list[_Piece], suffix: str) -> list[_Piece]:
    """Glue ``suffix`` to the last piece, so that no fold can come before it."""
    last = pieces[-1]
    return [*pieces[:-1], replace(last, text=last.text + suffix)]


def _keyword(name: str, what: str) -> str:
    if KEYWORD.fullmatch(name) is None:
        raise FormatError(f"{what} {name!r} is not an RFC 5321 Ldh-str keyword")
    return name


def _digits(number: str, what: str) -> str:
    if _DIGITS.fullmatch(number) is None:
        raise FormatError(f"{what} {number!r} is not a string of digits")
    return number


def with_a_labels(header: AuthenticationResults) -> AuthenticationResults:
    """The same results with the U-labels of every domain or address property
    (smtp.mailfrom, smtp.helo, header.from, header.d, header.i ...) as A-labels: the same
    domains (RFC 8616 section 3) in the form the ASCII header of a message without
    SMTPUTF8 can carry (RFC 5890 section 2.3.2.1). Other values are left alone; a UTF-8
    local part has no ASCII form, so ``format_field`` still refuses it there."""

    def convert(prop: Property) -> Property:
        if (prop.ptype.lower(), prop.name.lower()) not in _DOMAIN_PROPERTIES:
            return prop
        return replace(prop, value=_value_with_a_labels(prop.value))

    return replace(
        header,
        results=tuple(
            replace(res, properties=tuple(convert(p) for p in res.properties))
            for res in header.results
        ),
    )


def _value_with_a_labels(value: str) -> str:
    """A domain or ``[local-part]@domain`` with the domain's U-labels as A-labels; the value
    unchanged if it is ASCII already or its domain has no unambiguous A-label form."""
    if value.isascii():
        return value
    local_part, at, domain = value.rpartition("@")
    a_labels = to_a_labels(domain)
    return value if a_labels is None else f"{local_part}{at}{a_labels}"


def _is_plain_address(value: str) -> bool:
    """``[local-part]@domain-name`` with an ASCII dot-atom local-part: written unquoted."""
    local_part, at, domain = value.rpartition("@")
    if not at or DOMAIN_NAME.fullmatch(domain) is None:
        return False
    return not local_part or _ASCII_LOCAL_PART.fullmatch(local_part) is not None
