"""A strict scanner for the lexical layer of RFC 5322 as RFC 8601 uses it.

It reads CFWS (nested comments, quoted-pairs, folding), quoted strings, RFC 2045 tokens and
RFC 5321 keywords. A CR or LF is accepted only as part of a fold (CRLF followed by WSP).
"""

from collections.abc import Callable
from typing import NoReturn

from .chars import (
    DIGITS,
    DOMAIN_NAME,
    KEYWORD_CHARS,
    WSP,
    is_atext,
    is_ctext,
    is_qtext,
    is_quoted_pair_char,
    is_token_char,
)
from .errors import AuthResSyntaxError

_CRLF = "\r\n"


class Scanner:
    """A cursor over a field value; every method either advances or raises."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        """The current character, or "" at the end."""
        return self.text[self.pos : self.pos + 1]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def fail(self, message: str, position: int | None = None) -> NoReturn:
        raise AuthResSyntaxError(message, self.pos if position is None else position)

    def take(self, char: str) -> bool:
        """Consume ``char`` if it is next."""
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def expect(self, char: str, message: str) -> None:
        if not self.take(char):
            self.fail(message)

    def skip_fws(self) -> bool:
        """Consume folding white space; tell whether there was any."""
        start = self.pos
        while True:
            if self.peek() in WSP:
                self.pos += 1
            elif self._at_fold():
                self.pos += len(_CRLF)
            else:
                return self.pos > start

    def _at_fold(self) -> bool:
        """A CRLF that folds the line (followed by WSP) starts here."""
        after = self.pos + len(_CRLF)
        return self.text.startswith(_CRLF, self.pos) and self.text[after : after + 1] in WSP

    def skip_cfws(self) -> bool:
        """Consume comments and folding white space; tell whether there was any."""
        start = self.pos
        while self.skip_fws() or self.peek() == "(":
            if self.peek() == "(":
                self._comment()
        return self.pos > start

    def _comment(self) -> None:
        """Consume one comment, nested comments included."""
        start = self.pos
        depth = 0
        while True:
            char = self.peek()
            if char == "":
                self.fail("unterminated comment", start)
            if char == "\\":
                self._quoted_pair("comment")
            elif self.skip_fws():
                continue
            elif char in "()":
                depth += 1 if char == "(" else -1
                self.pos += 1
                if depth == 0:
                    return
            elif is_ctext(char):
                self.pos += 1
            else:
                self.fail("invalid character in comment")

    def _quoted_pair(self, where: str) -> str:
        """Consume a backslash and the character it quotes; return that character."""
        quoted = self.text[self.pos + 1 : self.pos + 2]
        if not quoted or not is_quoted_pair_char(quoted):
            self.fail(f"bad quoted-pair in {where}")
        self.pos += 2
        return quoted

    def quoted_string(self) -> str:
        """Consume a quoted-string; return its content, unescaped and unfolded."""
        start = self.pos
        self.expect('"', "expected '\"'")
        content: list[str] = []
        while True:
            char = self.peek()
            if char == '"':
                self.pos += 1
                return "".join(content)
            if char == "\\":
                content.append(self._quoted_pair("quoted-string"))
            elif char == "":
                self.fail("unterminated quoted-string", start)
            elif self._at_fold():
                self.pos += len(_CRLF)  # unfolding: the CRLF goes, the WSP after it stays
            elif char in WSP or is_qtext(char):
                content.append(char)
                self.pos += 1
            else:
                self.fail("invalid character in quoted-string")

    def raw_quoted_string(self) -> str:
        """Consume a quoted-string; return it as written (quotes and escapes kept), unfolded."""
        start = self.pos
        self.quoted_string()
        return self.text[start : self.pos].replace(_CRLF, "")

    def token(self) -> str:
        """Consume an RFC 2045 token; return "" if there is none here."""
        return self._run(is_token_char)

    def value(self) -> str | None:
        """Consume an RFC 2045 value (token or quoted-string); None if there is none here."""
        if self.peek() == '"':
            return self.quoted_string()
        return self.token() or None

    def keyword(self, what: str) -> str:
        """Consume an RFC 5321 Ldh-str, lower-cased."""
        start = self.pos
        word = self._run(lambda char: char in KEYWORD_CHARS)
        if not word:
            self.fail(f"expected {what}")
        if word.endswith("-"):
            self.fail(f"{what} must not end with '-'", start)
        return word.lower()

    def peek_keyword(self) -> str:
        """The Ldh characters starting here, lower-cased, without consuming them."""
        end = self.pos
        while end < len(self.text) and self.text[end] in KEYWORD_CHARS:
            end += 1
        return self.text[self.pos : end].lower()

    def digits(self) -> str:
        return self._run(lambda char: char in DIGITS)

    def dot_atom_text(self) -> str:
        """Consume an RFC 5322 dot-atom-text (UTF-8 allowed); return "" if there is none."""
        start = self.pos
        while self._run(is_atext):
            if not (self.peek() == "." and is_atext(self.text[self.pos + 1 : self.pos + 2])):
                break
            self.pos += 1
        return self.text[start : self.pos]

    def domain_name(self) -> str | None:
        """Consume an RFC 6376 domain-name (at least one dot); None if there is none here."""
        match = DOMAIN_NAME.match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group()

    def _run(self, accept: Callable[[str], bool]) -> str:
        start = self.pos
        while not self.at_end() and accept(self.text[self.pos]):
            self.pos += 1
        return self.text[start : self.pos]
