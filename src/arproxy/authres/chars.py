"""Character classes (RFC 2045, 5321, 5322, 6376, 6532) used by the A-R grammar."""

import re
import unicodedata

WSP = frozenset(" \t")

# RFC 2045 tspecials: a token never contains one, nor SPACE nor a control.
TSPECIALS = frozenset('()<>@,;:\\"/[]?=')

# RFC 5322 atext specials (a dot-atom local-part may contain them, a token may not contain all).
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")

# A whole RFC 2045 token: one or more VCHARs that are not tspecials (is_token_char as one
# regex, for the formatter, which tests every value it writes).
TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")

# RFC 5321 Ldh-str: letters, digits and "-", not ending in "-".
KEYWORD = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]")
KEYWORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
DIGITS = frozenset("0123456789")

# RFC 6376 section 3.5 domain-name: at least two labels, each a Let-dig [Ldh-str].
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
DOMAIN_NAME = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})+")

# Characters a writer refuses even inside a quoted-string or comment: C0/C1 controls and DEL
# (category Cc), lone surrogates (not UTF-8), and the Unicode line and paragraph separators,
# which some readers (e.g. Python's str.splitlines) treat as line breaks.
_UNWRITABLE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# The US-ASCII characters among them (is_unwritable for ASCII text): the controls but TAB.
ASCII_UNWRITABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def is_printable_ascii(char: str) -> bool:
    """RFC 5234 VCHAR: a visible US-ASCII character."""
    return "!" <= char <= "~"


def is_utf8_non_ascii(char: str) -> bool:
    """RFC 6532 UTF8-non-ascii; lone surrogates (undecodable bytes) are not UTF-8."""
    return char > "\x7f" and not "\ud800" <= char <= "\udfff"


def is_token_char(char: str) -> bool:
    """A character of an RFC 2045 token (US-ASCII only)."""
    return is_printable_ascii(char) and char not in TSPECIALS


def is_lenient_token_char(char: str) -> bool:
    """A token character for the lenient reader, which also accepts non-ASCII."""
    return is_token_char(char) or char > "\x7f"


def is_atext(char: str) -> bool:
    """RFC 5322 atext extended by RFC 6532 (UTF-8 allowed in a dot-atom local-part)."""
    return (char.isascii() and (char.isalnum() or char in _ATEXT_SPECIALS)) or is_utf8_non_ascii(
        char
    )


def is_qtext(char: str) -> bool:
    """RFC 5322 qtext extended by RFC 6532."""
    return (is_printable_ascii(char) and char not in '"\\') or is_utf8_non_ascii(char)


def is_ctext(char: str) -> bool:
    """RFC 5322 ctext extended by RFC 6532."""
    return (is_printable_ascii(char) and char not in "()\\") or is_utf8_non_ascii(char)


def is_quoted_pair_char(char: str) -> bool:
    """What may follow a backslash: VCHAR (with UTF-8) or WSP."""
    return is_printable_ascii(char) or char in WSP or is_utf8_non_ascii(char)


def is_unwritable(char: str) -> bool:
    """A character the formatter never writes, quoted or not (TAB is allowed: it is WSP)."""
    return char != "\t" and unicodedata.category(char) in _UNWRITABLE_CATEGORIES
