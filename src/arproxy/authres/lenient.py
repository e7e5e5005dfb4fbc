"""The lenient reader: recover the authserv-id of a field whose payload may not parse.

This is the ``lenient_authserv_id`` algorithm of the conformance corpus README. Section 5 and
section 7.8 of RFC 8601 act on this id: a forged field that claims our id is removed even when
the rest of it is malformed.
"""

import re

from .chars import DIGITS, WSP, is_lenient_token_char

# Unfolding also accepts bare LF and bare CR line ends, which some messages have.
_FOLD = re.compile(r"(?:\r\n|\r|\n)(?=[ \t])")


def recover_authserv_id(value: str) -> str | None:
    """The authserv-id a lenient reader finds at the start of ``value``, or None.

    Unfold, skip leading comments, take the first quoted-string (unescaped) or token (non-ASCII
    allowed). None when there is no such token (empty field, leading ';' or '=', unbalanced
    leading quote or comment) or when it is followed by ``=`` or ``/digits=`` (it is then a
    method, as in Exchange Online's ``spf=pass ...``), or by an unterminated comment.
    """
    text = unfold(value)
    start = _skip_cfws(text, 0)
    if start is None:
        return None
    found = _quoted_string(text, start) if text.startswith('"', start) else _token(text, start)
    if found is None:
        return None
    authserv_id, end = found
    if _method_follows(text, end):
        return None
    return authserv_id


def unfold(value: str) -> str:
    """Remove the line breaks of folding (CRLF, and also bare LF or CR, before WSP)."""
    return _FOLD.sub("", value)


def _method_follows(text: str, pos: int) -> bool:
    """``[CFWS] "="`` or ``[CFWS] "/" [CFWS] digits [CFWS] "="`` follows (or a broken comment)."""
    after = _skip_cfws(text, pos)
    if after is None:
        return True
    if text.startswith("/", after):
        version_start = _skip_cfws(text, after + 1)
        if version_start is None:
            return True
        version_end = version_start
        while version_end < len(text) and text[version_end] in DIGITS:
            version_end += 1
        if version_end == version_start:
            return False
        after = _skip_cfws(text, version_end)
        if after is None:
            return True
    return text.startswith("=", after)


def _skip_cfws(text: str, pos: int) -> int | None:
    """Skip white space and comments; None if a comment is not closed."""
    while pos < len(text):
        if text[pos] in WSP:
            pos += 1
        elif text[pos] == "(":
            closed = _skip_comment(text, pos)
            if closed is None:
                return None
            pos = closed
        else:
            break
    return pos


def _skip_comment(text: str, pos: int) -> int | None:
    """The position after the comment opened at ``pos``, or None if it is never closed."""
    depth = 0
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return None


def _quoted_string(text: str, pos: int) -> tuple[str, int] | None:
    """The unescaped content of the quoted-string at ``pos`` and the position after it."""
    content: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(content), pos + 1
        if char == "\\":
            if pos + 1 == len(text):
                return None
            pos += 1
            char = text[pos]
        content.append(char)
        pos += 1
    return None


def _token(text: str, pos: int) -> tuple[str, int] | None:
    end = pos
    while end < len(text) and is_lenient_token_char(text[end]):
        end += 1
    if end == pos:
        return None
    return text[pos:end], end
