"""Write an Authentication-Results field that parses back to exactly the results it holds.

Values may come from clients (HELO, MAIL FROM, AUTH identity, DKIM d=, reason text), so every
value is written as a token, an address, or a quoted-string with escapes; characters that no
quoting can carry raise FormatError. Names come from our code and must be Ldh-str keywords.
"""

import re
from dataclasses import replace

from arproxy.idn import to_a_labels

from .chars import ASCII_UNWRITABLE, DOMAIN_NAME, KEYWORD, TOKEN, is_unwritable
from .errors import FormatError
from .model import AuthenticationResults, Property, ResInfo

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
# Where a comment may be folded: a WSP that follows a non-WSP (RFC 5322 section 3.2.2
# FWS inside a comment); the fold goes before it and keeps it.
_COMMENT_FOLD_POINT = re.compile(r"(?<=[^ \t])([ \t])")


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
    field = "".join(_Writer(allow_utf8).lines(header))
    # Only a field longer than the hard limit can hold a line longer than it.
    if _octets(field) > HARD_LINE_LIMIT:
        for line in field.split(_CRLF):
            if _octets(line) > HARD_LINE_LIMIT:
                raise FormatError(f"a line of the field cannot be folded below {HARD_LINE_LIMIT}")
    return field + _CRLF


def _head_text(parts: list[str]) -> str:
    """The field's first line: the field name, then the other parts folded where needed."""
    out = [parts[0]]
    _append_parts(parts[1:], out, _octets(parts[0]))
    return "".join(out)


def _resinfo_text(parts: list[str]) -> str:
    """One resinfo, from the CRLF that starts its own continuation line."""
    out = [_RESINFO_FOLD, parts[0]]
    _append_parts(parts[1:], out, len(_RESINFO_FOLD) - len(_CRLF) + _octets(parts[0]))
    return "".join(out)


def _append_parts(parts: list[str], out: list[str], line_octets: int) -> None:
    """Append `parts` greedily after a line holding `line_octets` octets: each after a
    space while the line stays within the soft limit, else on a continuation line; a
    comment that does not fit moves to a continuation line whole and, if still too long,
    is folded at its own white space (``_append_folded_comment``)."""
    for part in parts:
        size = _octets(part)
        if line_octets + 1 + size <= SOFT_LINE_LIMIT:
            out.append(" ")
            line_octets += 1 + size
        elif part.startswith("("):  # a comment: no other part starts with "(" (a keyword)
            line_octets = _append_folded_comment(part, out)
            continue
        else:
            out.append(_INNER_FOLD)
            line_octets = len(_INNER_FOLD) - len(_CRLF) + size
        out.append(part)


def _append_folded_comment(comment: str, out: list[str]) -> int:
    """Append a comment from a new continuation line, folding it again before a WSP that
    follows non-WSP (RFC 5322 section 3.2.2: FWS in a comment; the fold keeps the WSP)
    wherever the next run of text would pass the soft limit. The octets of its last line."""
    runs = _COMMENT_FOLD_POINT.split(comment)  # [run, WSP, run, WSP, run ...]
    out.append(_INNER_FOLD)
    out.append(runs[0])
    line_octets = len(_INNER_FOLD) - len(_CRLF) + _octets(runs[0])
    for wsp, run in zip(runs[1::2], runs[2::2], strict=True):
        size = len(wsp) + _octets(run)
        if line_octets + size > SOFT_LINE_LIMIT:
            out.append(_CRLF)  # the WSP starts the continuation line
            line_octets = size
        else:
            line_octets += size
        out.append(wsp)
        out.append(run)
    return line_octets


def _octets(text: str) -> int:
    # str.isascii is one C pass; most text is ASCII and needs no encoding to be measured.
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class _Writer:
    """Turns the model into text, validating and quoting as it goes."""

    def __init__(self, allow_utf8: bool) -> None:
        self.allow_utf8 = allow_utf8

    def lines(self, header: AuthenticationResults) -> list[str]:
        """The field without its final CRLF: its first line (folded if need be), then
        each resinfo from the CRLF that starts its line."""
        head = [f"{FIELD_NAME}:", self._value(header.authserv_id, "authserv-id")]
        if header.version is not None:
            head.append(_digits(header.version, "version"))
        head[-1] += ";"  # glued to its part: no fold can come before it
        if not header.results:
            head.append("none")
            return [_head_text(head)]
        out = [_head_text(head)]
        last = len(header.results) - 1
        for index, resinfo in enumerate(header.results):
            parts = self._resinfo(resinfo)
            if index < last:
                parts[-1] += ";"
            out.append(_resinfo_text(parts))
        return out

    def _resinfo(self, resinfo: ResInfo) -> list[str]:
        """The parts of one resinfo, ``method=result`` first; a comment is one part."""
        method = _keyword(resinfo.method, "method")
        if method.lower() == "none":
            # "; none=pass" is a resinfo by the ABNF, but common readers take it for no-result.
            raise FormatError("a method may not be called 'none'")
        if resinfo.method_version is not None:
            method += "/" + _digits(resinfo.method_version, "method version")
        parts = [f"{method}={_keyword(resinfo.result, 'result')}"]
        if resinfo.comment is not None:
            parts.append(self._comment(resinfo.comment))
        if resinfo.reason is not None:
            parts.append("reason=" + self._value(resinfo.reason, "reason"))
        for prop in resinfo.properties:
            ptype = _keyword(prop.ptype, "ptype")
            name = _keyword(prop.name, "property")
            value = self._value(prop.value, f"{ptype}.{name}", address_allowed=True)
            parts.append(f"{ptype}.{name}={value}")
            if prop.comment is not None:
                parts.append(self._comment(prop.comment))
        return parts

    def _value(self, value: str, what: str, *, address_allowed: bool = False) -> str:
        """A token if possible, else (for a pvalue) a plain address, else a quoted-string."""
        self._check_writable(value, what)
        if TOKEN.fullmatch(value) is not None:
            return value
        if address_allowed and _is_plain_address(value):
            return value
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'

    def _comment(self, comment: str) -> str:
        """``(comment)`` with escapes, as one part (split at its white space only to fold)."""
        self._check_writable(comment, "comment")
        # A backslash before each "(", ")" and "\\" (RFC 5322 section 3.2.2 ctext and
        # quoted-pair); the backslashes first, so that the added ones are not doubled.
        escaped = comment.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        return f"({escaped})"

    def _check_writable(self, text: str, what: str) -> None:
        # ASCII text (nearly all of it) is checked by one regex search; the only
        # unwritable ASCII characters are the controls, and its first one is the
        # first offending character, as the per-character loop would find it.
        if text.isascii():
            bad = ASCII_UNWRITABLE.search(text)
            if bad is not None:
                raise FormatError(f"{what} contains {bad.group()!r}, which no quoting can carry")
            return
        for char in text:
            if is_unwritable(char):
                raise FormatError(f"{what} contains {char!r}, which no quoting can carry")
            if not (char.isascii() or self.allow_utf8):
                raise FormatError(f"{what} contains non-ASCII text and UTF-8 is not allowed")


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

    # Nearly every header is ASCII already: it is returned as it is, not copied.
    results = tuple(_resinfo_with_a_labels(res) for res in header.results)
    if all(new is old for new, old in zip(results, header.results, strict=True)):
        return header
    return replace(header, results=results)


def _resinfo_with_a_labels(resinfo: ResInfo) -> ResInfo:
    """``resinfo`` with its domain properties' U-labels as A-labels; itself if none changed."""
    properties = tuple(_property_with_a_labels(prop) for prop in resinfo.properties)
    if all(new is old for new, old in zip(properties, resinfo.properties, strict=True)):
        return resinfo
    return replace(resinfo, properties=properties)


def _property_with_a_labels(prop: Property) -> Property:
    if prop.value.isascii():  # no U-label: _value_with_a_labels would return it as it is
        return prop
    if (prop.ptype.lower(), prop.name.lower()) not in _DOMAIN_PROPERTIES:
        return prop
    value = _value_with_a_labels(prop.value)
    return prop if value == prop.value else replace(prop, value=value)


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
