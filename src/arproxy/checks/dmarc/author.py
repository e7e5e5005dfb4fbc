"""The author domain (RFC 7489 section 6.6.1): the domains of the single RFC5322.From field.

The From field is hostile input and a known place to attack DMARC (several From fields, an
address list, text two parsers read differently): anything this module cannot read one way
only is an AuthorError (permerror), and no domain leaves it before it is a checked A-label.

Two readers, one answer. The general one is the stdlib's ``email.headerregistry`` (all of
RFC 5322 section 3.6.2, obsolete syntax included), checked against ``email.utils``'s older
parser. Most From fields are one of two plain shapes, ``addr-spec`` or ``display-name
<addr-spec>``, and for them a strict matcher written from RFC 5322 sections 3.2.3, 3.2.4,
3.4 and 3.4.1 finds the domain without the registry (about half of the DMARC check's CPU
under the bench load). It takes a value only when the whole of it is that shape in ASCII,
with no comment, group, second mailbox, encoded-word (RFC 2047) or obsolete form; anything
else goes to the general reader. tests/unit/checks/test_dmarc_author_fast.py checks that
the two give the same domains on every value the matcher takes.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import functools
import re

from arproxy import names
from arproxy.header import header_of

# A From field longer than this is abuse, not mail; the stdlib address parser is slow on it.
MAX_FROM_FIELD_CHARS = 4096
# Section 6.6.1 evaluates every domain of a multi-valued From field; bounded, as
# draft-ietf-dmarc-dmarcbis advises, so a field of many domains cannot cost many lookups.
MAX_AUTHOR_DOMAINS = 5
# What the stdlib parser calls defects but is valid syntax: the obsolete forms of RFC 5322
# section 4 (e.g. "Dr. Alice <...>") and a UTF-8 local-part (RFC 6532, RFC 8616).
_ACCEPTED_DEFECTS = (email.errors.ObsoleteHeaderDefect, email.errors.NonASCIILocalPartDefect)
# RFC 5322 section 3.6.8 ftext; white space before the colon is the obsolete syntax (4.5).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# The plain shapes of one mailbox (RFC 5322 section 3.4), white space as the only CFWS:
#   atext (3.2.3), dot-atom-text (3.2.3), addr-spec with a dot-atom local-part and domain
#   (3.4.1: no quoted local-part, no domain-literal), a display-name that is words (atoms or
#   quoted-strings of qtext and white space, 3.2.4) separated by white space, and the
#   angle-addr "<" addr-spec ">" (no obs-route). "=?" nowhere: an encoded-word (RFC 2047
#   section 2) is a string of atext, which only the general reader decodes.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_ATOM_TEXT = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_WORD = rf'(?:{_ATEXT}+|"[ \t\x21\x23-\x5b\x5d-\x7e]*")'
_PLAIN_MAILBOX = re.compile(
    rf"(?!.*=\?)[ \t]*"
    rf"(?:{_DOT_ATOM_TEXT}@(?P<bare>{_DOT_ATOM_TEXT})"
    rf"|(?:{_WORD}(?:[ \t]+{_WORD})*[ \t]*)?<{_DOT_ATOM_TEXT}@(?P<angled>{_DOT_ATOM_TEXT})>)"
    rf"[ \t]*",
    re.ASCII,
)


class AuthorError(ValueError):
    """The message has no single readable RFC5322.From field with usable domains."""


def author_domains(message: bytes | None) -> tuple[str, ...]:
    """The distinct domains of the message's one From field, as lower-case A-labels.

    Several From fields, none, an address-less or unparsable one raise AuthorError: such
    messages are outside DMARC's scope (section 6.6.1) and reported as permerror. A field
    that is a list of mailboxes yields each distinct domain, to be evaluated one by one.
    """
    if message is None:
        raise AuthorError("no message")
    # The From fields as every part of arproxy reads the header (arproxy.header): the header
    # ends at the first empty line, lines end at CRLF, bare LF or bare CR, and a stray line
    # belongs to no field. RFC 5322 section 2.2.3: unfolding drops only the line ends.
    values = [
        field.unfolded().decode("utf-8", errors="replace")
        for field in header_of(message).named("from")  # intake's reading for a Message
    ]
    if not values:
        raise AuthorError("no From field")
    if len(values) > 1:
        raise AuthorError(f"{len(values)} From fields")
    domains = tuple(dict.fromkeys(_a_label_or_error(d) for d in _mailbox_domains(values[0])))
    if len(domains) > MAX_AUTHOR_DOMAINS:
        raise AuthorError(f"{len(domains)} author domains, more than {MAX_AUTHOR_DOMAINS}")
    return domains


def _mailbox_domains(value: str) -> list[str]:
    """The domain of each mailbox in a From field value, groups' members included."""
    if len(value) > MAX_FROM_FIELD_CHARS:
        raise AuthorError(f"From field of {len(value)} characters")
    if _CONTROL.search(value):
        raise AuthorError("control character in the From field")
    plain = plain_mailbox_domain(value)
    if plain is not None:
        return [plain]
    return parsed_mailbox_domains(value)


def plain_mailbox_domain(value: str) -> str | None:
    """The domain of a From field value that is one plain mailbox (``_PLAIN_MAILBOX``,
    RFC 5322 section 3.4), as written; None for any other value (it goes to the general
    reader, which gives the same domains on every value this one takes)."""
    plain = _PLAIN_MAILBOX.fullmatch(value)
    if plain is None:
        return None
    return plain.group("bare") or plain.group("angled")


def parsed_mailbox_domains(value: str) -> list[str]:
    """The domains of a From field value by the general reader: the header registry,
    confirmed by the older parser; AuthorError when they disagree or find no domain."""
    domains = _domains_by_header_registry(value)
    # A second, independent reading (the older parser, which leaves encoded-words alone):
    # if the two disagree, which domain a reader sees depends on its parser, the ground of
    # the known From-field attacks on DMARC, so the field counts as unparsable.
    if [d.lower() for d in domains] != [d.lower() for d in _domains_by_getaddresses(value)]:
        raise AuthorError("the From field parses to different addresses two ways")
    if not domains:
        raise AuthorError("no address in the From field")
    if "" in domains:
        raise AuthorError("an address in the From field has no domain")
    return domains


def _domains_by_header_registry(value: str) -> list[str]:
    try:
        field = email.policy.default.header_factory("From", value)
    # The stdlib address parser raises more than HeaderParseError on hostile text (for
    # instance RecursionError on deeply nested comments, IndexError in past releases); any
    # failure to read the field is section 6.6.1's unparsable From, and on_timeout runs
    # this too, so nothing may escape.
    except Exception as exc:
        raise AuthorError(f"From field unparsable ({type(exc).__name__})") from exc
    defects = [d for d in field.defects if not isinstance(d, _ACCEPTED_DEFECTS)]
    if defects:
        raise AuthorError(f"From field malformed ({type(defects[0]).__name__})")
    return [address.domain for address in field.addresses]


def _domains_by_getaddresses(value: str) -> list[str]:
    try:
        pairs = email.utils.getaddresses([value])
    except Exception as exc:  # same reasoning as in the function above
        raise AuthorError(f"From field unparsable ({type(exc).__name__})") from exc
    return [address.rpartition("@")[2] for _, address in pairs if address]


def _a_label_or_error(domain: str) -> str:
    a_label = to_a_label(domain)
    if a_label is None:
        raise AuthorError(f"author domain {domain!r} is not a valid domain name")
    return a_label


@functools.lru_cache(maxsize=256)
def to_a_label(domain: str) -> str | None:
    """`domain` lower-cased with U-labels converted to A-labels (section 6.6.1, IDNA 2003
    as Python's codec implements it); None when it is not a valid host name (RFC 5321
    section 2.3.5: a fully-qualified name, so at least two labels). Cached per worker
    (a pure function; the same author domains come back message after message)."""
    return names.idna2003_host_name(domain, min_labels=2)
