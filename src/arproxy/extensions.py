"""SMTP service extensions: what we offer, which parameters that allows, what goes on.

Pure rules, no I/O. Three decisions live here:

* Which MAIL and RCPT parameters a client may use: exactly those of an extension our
  EHLO reply listed (RFC 5321 section 4.1.1.11 and RFC 1869 section 6: any other gets
  555); a parameter that breaks the esmtp-param grammar gets 501 (RFC 5321 section 4.1.2).
* What may be said to the downstream, whose EHLO we learn at the first RCPT because the
  relay is live: a parameter only where the downstream offered its extension; an
  SMTPUTF8 transaction is refused when it did not (RFC 6531 section 3.4), and 8-bit
  content when it did not offer 8BITMIME (RFC 6152 section 3): never a silent downgrade.
* Which envelope addresses a transaction may carry: UTF-8 only under SMTPUTF8
  (RFC 6531 section 3.3), and only well-formed UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from arproxy.replies import (
    DOWNSTREAM_LACKS_8BITMIME,
    DOWNSTREAM_LACKS_SMTPUTF8,
    DOWNSTREAM_LACKS_SMTPUTF8_ADDRESS,
    NOT_ASCII_WITHOUT_SMTPUTF8,
    RECIPIENT_NOT_UTF8,
    SENDER_NOT_UTF8,
    Reply,
)

EIGHTBITMIME = "8BITMIME"
SMTPUTF8 = "SMTPUTF8"
SIZE = "SIZE"
AUTH = "AUTH"

# Each MAIL parameter we understand and the EHLO keyword that offers it. RCPT has
# none: DSN (RFC 3461: NOTIFY, ORCPT) and the others are not offered.
MAIL_PARAMETERS: Mapping[str, str] = {
    "SIZE": SIZE,  # RFC 1870
    "BODY": EIGHTBITMIME,  # RFC 6152
    "SMTPUTF8": SMTPUTF8,  # RFC 6531
    "AUTH": AUTH,  # RFC 4954 section 5
}
RCPT_PARAMETERS: Mapping[str, str] = {}

# RFC 5321 section 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
# esmtp-value = 1*(%d33-60 / %d62-126), which RFC 6531 section 3.3 extends by UTF-8.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE_CHAR = re.compile(r"[\x21-\x3c\x3e-\x7e]|[^\x00-\x7f\ud800-\udfff]")
# RFC 3461 section 4 (used by RFC 4954 section 5 for AUTH=): xtext = *( xchar / hexchar ),
# xchar is "!" to "~" but "+" and "=", hexchar is "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")

_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


class ParameterSyntaxError(ValueError):
    """A MAIL or RCPT parameter that is not an RFC 5321 esmtp-param (reply 501)."""


@dataclass(frozen=True)
class Parameter:
    """One esmtp-param; `keyword` upper-cased, `value` None when there is no "="."""

    keyword: str
    value: str | None

    def __str__(self) -> str:
        return self.keyword if self.value is None else f"{self.keyword}={self.value}"


def offered_keywords(ehlo_lines: Iterable[str]) -> frozenset[str]:
    """The extension keywords of our EHLO reply, upper-cased.

    `ehlo_lines` are reply lines as sent, "250-SIZE 1000" ... "250 HELP"; the first is
    the greeting (RFC 5321 section 4.1.1.1), not a keyword.
    """
    keywords = set()
    for index, line in enumerate(ehlo_lines):
        text = line[4:] if len(line) > 3 and line[:3].isdigit() else line
        if index > 0 and text:
            keywords.add(text.split()[0].upper())
    return frozenset(keywords)


def parse_parameters(words: Sequence[str]) -> list[Parameter]:
    """The esmtp-params of a MAIL or RCPT command, one per word, in order.

    Raises ParameterSyntaxError for a word that is not `keyword[=value]` per RFC 5321
    section 4.1.2 (values may be UTF-8, RFC 6531 section 3.3), or a keyword given twice
    (a parameter says one thing once; RFC 1869 section 6 leaves no room for two).
    """
    parsed: list[Parameter] = []
    seen: set[str] = set()
    for word in words:
        keyword, equals, value = word.partition("=")
        if not _KEYWORD.fullmatch(keyword):
            raise ParameterSyntaxError(f"{word!r} is not an esmtp-param")
        if equals and not (value and all(_VALUE_CHAR.fullmatch(char) for char in value)):
            raise ParameterSyntaxError(f"{word!r} has no valid esmtp-value")
        keyword = keyword.upper()
        if keyword in seen:
            raise ParameterSyntaxError(f"{keyword} given twice")
        seen.add(keyword)
        parsed.append(Parameter(keyword, value if equals else None))
    return parsed


@dataclass(frozen=True)
class Screened:
    """The parameters of one MAIL or RCPT split by what we do with them."""

    accepted: tuple[Parameter, ...]
    not_offered: tuple[Parameter, ...]


def screen_parameters(
    verb: str, parameters: Sequence[Parameter], offered: Collection[str]
) -> Screened:
    """Accepted: a parameter of an extension in `offered` (our EHLO keywords). Anything
    else is `not_offered` and gets 555 (RFC 5321 sections 4.1.1.11 and 4.2.3).

    Raises ParameterSyntaxError for an AUTH= value that is not xtext (RFC 4954 section 5);
    the other values are judged where they are used (aiosmtpd: SIZE, BODY, SMTPUTF8).
    """
    known = MAIL_PARAMETERS if verb == "MAIL" else RCPT_PARAMETERS
    accepted: list[Parameter] = []
    not_offered: list[Parameter] = []
    for parameter in parameters:
        if known.get(parameter.keyword) in offered:
            if parameter.keyword == "AUTH" and not _XTEXT.fullmatch(parameter.value or ""):
                raise ParameterSyntaxError(f"AUTH={parameter.value} is not xtext")
            accepted.append(parameter)
        else:
            not_offered.append(parameter)
    return Screened(tuple(accepted), tuple(not_offered))


def is_smtputf8(mail_options: Iterable[str]) -> bool:
    """Whether the client's MAIL parameters ask for SMTPUTF8 (RFC 6531 section 3.4)."""
    return any(option.upper() == SMTPUTF8 for option in mail_options)


def address_refusal(address: str, *, smtputf8: bool, sender: bool) -> Reply | None:
    """Why a MAIL (`sender`) or RCPT address may not enter the transaction, if it may not.

    aiosmtpd decodes command arguments as UTF-8 with surrogate escapes: a lone
    surrogate is a byte that was not UTF-8, which no SMTP grammar allows. Non-ASCII
    needs SMTPUTF8 on MAIL (RFC 6531 sections 3.3 and 3.5: 553 with X.6.7).
    """
    if any("\ud800" <= char <= "\udfff" for char in address):
        return SENDER_NOT_UTF8 if sender else RECIPIENT_NOT_UTF8
    if not smtputf8 and not address.isascii():
        return NOT_ASCII_WITHOUT_SMTPUTF8
    return None


@dataclass(frozen=True)
class DownstreamPlan:
    """What the downstream MAIL carries, or why the transaction cannot go on."""

    options: tuple[str, ...]
    smtputf8: bool  # addresses go out UTF-8 encoded
    eight_bit_ok: bool  # the downstream offered 8BITMIME
    refusal: Reply | None = None


def plan_downstream(
    sender: str, recipient: str, mail_options: Sequence[str], offered: Collection[str]
) -> DownstreamPlan:
    """The downstream MAIL parameters, from the client's and the downstream's EHLO.

    `offered` holds the downstream's EHLO keywords (upper-case), `recipient` the first
    RCPT address. Carried where the downstream offers the extension: BODY (RFC 6152
    section 2: only to a server that offered 8BITMIME), SMTPUTF8, SIZE (RFC 1870 section 6:
    the client's estimate; ours adds two header fields). AUTH= is not passed on: the
    downstream does not authenticate us (RFC 4954 section 5 leaves it out then).
    SMTPUTF8 the downstream lacks: 553 5.6.7 with a non-ASCII address (RFC 6531
    section 3.5), else 550 5.6.9 (RFC 6531 section 3.4: no downgrade by a relay).
    """
    eight_bit_ok = EIGHTBITMIME in offered
    wants_utf8 = is_smtputf8(mail_options)
    if wants_utf8 and SMTPUTF8 not in offered:
        ascii_envelope = sender.isascii() and recipient.isascii()
        refusal = DOWNSTREAM_LACKS_SMTPUTF8 if ascii_envelope else DOWNSTREAM_LACKS_SMTPUTF8_ADDRESS
        return DownstreamPlan((), False, eight_bit_ok, refusal)
    options: list[str] = []
    for option in mail_options:
        keyword = option.partition("=")[0].upper()
        if keyword == "BODY" and eight_bit_ok:
            options.append(option.upper())
        elif keyword == SMTPUTF8:
            options.append(SMTPUTF8)
        elif keyword == SIZE and SIZE in offered:
            options.append(option.upper())
    return DownstreamPlan(tuple(options), wants_utf8, eight_bit_ok)


def content_refusal(message: bytes, plan: DownstreamPlan) -> Reply | None:
    """554 5.6.3 for 8-bit content the downstream did not offer 8BITMIME for.

    Decided on the content at the end of DATA, not on the BODY= declaration at RCPT:
    RFC 6152 section 3 forbids relaying 8-bit *data* to such a server, and a message
    declared 8BITMIME whose bytes are all 7-bit may go on. Converting it (RFC 6152
    section 3's other choice) would break DKIM signatures, so we refuse (RFC 3463 X.6.3).
    """
    if plan.eight_bit_ok or _EIGHT_BIT.search(message) is None:
        return None
    return DOWNSTREAM_LACKS_8BITMIME
