"""Strict parser for the Authentication-Results field value (RFC 8601 section 2.2).

It follows the ABNF with the grammar decisions of the conformance corpus README: Keyword is an
RFC 5321 Ldh-str, value is an RFC 2045 token or quoted-string, a pvalue may also be
``[local-part]@domain-name``, CFWS is required before a reasonspec and before the first
propspec, and ``none`` must stand alone. Comments are dropped; names are lower-cased.
"""

import re

from .chars import DIGITS
from .errors import AuthResSyntaxError
from .lexer import Scanner
from .model import AuthenticationResults, Property, ResInfo

_FIELD_TERMINATOR = "\r\n"
# A CR or LF that is not part of CRLF WSP (a fold) would end the field or smuggle another one.
_STRAY_LINE_BREAK = re.compile(r"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n")


def parse(value: str) -> AuthenticationResults:
    """Parse the text after ``Authentication-Results:``; raise AuthResSyntaxError if invalid.

    The text may start with white space, contain folds and end with the field's CRLF.
    """
    if value.endswith(_FIELD_TERMINATOR):
        value = value[: -len(_FIELD_TERMINATOR)]
    stray = _STRAY_LINE_BREAK.search(value)
    if stray is not None:
        raise AuthResSyntaxError("CR or LF not part of folding", stray.start())
    return _Parser(Scanner(value)).header()


class _Parser:
    """Recursive descent over the authres-payload rule, one method per ABNF rule."""

    def __init__(self, scanner: Scanner) -> None:
        self.s = scanner

    def header(self) -> AuthenticationResults:
        s = self.s
        s.skip_cfws()
        authserv_id = s.value()
        if authserv_id is None:
            s.fail("expected authserv-id")
        version = None
        if s.skip_cfws() and s.peek() in DIGITS:
            version = s.digits()
            s.skip_cfws()
        s.expect(";", "expected ';'")
        results = () if self._no_result() else self._resinfos()
        s.skip_cfws()
        if not s.at_end():
            s.fail("expected ';' or the end of the field" if results else "'none' must stand alone")
        return AuthenticationResults(authserv_id, results, version)

    def _no_result(self) -> bool:
        """Consume ``[CFWS] none`` if that is what follows the first ';'."""
        s = self.s
        s.skip_cfws()
        start = s.pos
        if s.peek_keyword() != "none":
            return False
        s.keyword("none")
        s.skip_cfws()
        if s.peek() in ("=", "/"):  # a method that happens to be called "none"
            s.pos = start
            return False
        return True

    def _resinfos(self) -> tuple[ResInfo, ...]:
        results = [self._resinfo()]
        while True:
            self.s.skip_cfws()
            if not self.s.take(";"):
                return tuple(results)
            results.append(self._resinfo())

    def _resinfo(self) -> ResInfo:
        method, method_version, result = self._methodspec()
        reason = None
        properties: tuple[Property, ...] = ()
        if self._separator_before("reasonspec or propspec") and self._at_reasonspec():
            reason = self._reasonspec()
            if not self._separator_before("propspec"):
                return ResInfo(method, result, reason, properties, None, method_version)
        if not self._at_resinfo_end():
            properties = self._propspecs()
        return ResInfo(method, result, reason, properties, None, method_version)

    def _separator_before(self, what: str) -> bool:
        """Consume CFWS; True if a reasonspec or propspec may follow, False at ';' or the end."""
        had_cfws = self.s.skip_cfws()
        if self._at_resinfo_end():
            return False
        if not had_cfws:
            self.s.fail(f"expected CFWS before {what}")
        return True

    def _at_resinfo_end(self) -> bool:
        return self.s.at_end() or self.s.peek() == ";"

    def _methodspec(self) -> tuple[str, str | None, str]:
        s = self.s
        s.skip_cfws()
        method = s.keyword("method")
        s.skip_cfws()
        method_version = None
        if s.take("/"):
            s.skip_cfws()
            method_version = s.digits() or s.fail("expected method-version")
            s.skip_cfws()
        s.expect("=", "expected '=' after method")
        s.skip_cfws()
        return method, method_version, s.keyword("result")

    def _at_reasonspec(self) -> bool:
        """``reason`` followed by ``=`` (``reason.x=y`` is a propspec whose ptype is reason)."""
        s = self.s
        start = s.pos
        if s.peek_keyword() != "reason":
            return False
        s.keyword("reason")
        s.skip_cfws()
        is_reason = s.peek() == "="
        s.pos = start
        return is_reason

    def _reasonspec(self) -> str:
        s = self.s
        s.keyword("reason")
        s.skip_cfws()
        s.expect("=", "expected '=' after reason")
        s.skip_cfws()
        reason = s.value()
        if reason is None:
            s.fail("expected reason value")
        return reason

    def _propspecs(self) -> tuple[Property, ...]:
        # No separator is needed between propspecs: a pvalue ends with optional CFWS.
        properties = [self._propspec()]
        while True:
            self.s.skip_cfws()
            if self._at_resinfo_end():
                return tuple(properties)
            properties.append(self._propspec())

    def _propspec(self) -> Property:
        s = self.s
        ptype = s.keyword("ptype")
        s.skip_cfws()
        s.expect(".", "expected '.' after ptype")
        s.skip_cfws()
        name = s.keyword("property")
        s.skip_cfws()
        s.expect("=", "expected '=' after property")
        return Property(ptype, name, self._pvalue())

    def _pvalue(self) -> str:
        """``[CFWS] (value / [[local-part] "@"] domain-name)``; the trailing CFWS is left."""
        s = self.s
        s.skip_cfws()
        start = s.pos
        address = self._address()
        if address is not None:
            return address
        s.pos = start
        value = s.value()
        if value is None:
            s.fail("expected pvalue")
        return value

    def _address(self) -> str | None:
        """``[local-part] "@" domain-name`` as written, or None (and a moved cursor) if not."""
        s = self.s
        local_part = s.raw_quoted_string() if s.peek() == '"' else s.dot_atom_text()
        if not s.take("@"):
            return None
        domain = s.domain_name()
        if domain is None:
            return None
        return f"{local_part}@{domain}"
