"""DMARC (RFC 7489): does an identifier that SPF or DKIM authenticated align with the author?

The author domain comes from the message's single RFC5322.From field (section 6.6.1), its
policy from `_dmarc.<domain>` or else `_dmarc.<organizational domain>` (section 6.6.3), and
the result from the SPF and DKIM results reported for the same message (section 3.1, read
from `ctx.prior`). Reported as RFC 7489 section 11.2 registers it: `dmarc=<result>
header.from=<domain>`, plus the common `policy.dmarc=<none|quarantine|reject>`.

The From field is hostile input and a known place to attack DMARC (several From fields, an
address list, text two parsers read differently): anything this module cannot read one way
only is a permerror, and no domain reaches the header field before it is a checked A-label.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.policy
import email.utils
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from publicsuffixlist import PublicSuffixList

from arproxy.authres import Property, ResInfo
from arproxy.checks.base import Check, CheckContext, Stage, Value
from arproxy.dns import Resolver, Status
from arproxy.header import read_header

Disposition = Literal["none", "quarantine", "reject"]
AlignmentMode = Literal["r", "s"]

# A From field longer than this is abuse, not mail; the stdlib address parser is slow on it.
MAX_FROM_FIELD_CHARS = 4096
# Section 6.6.1 evaluates every domain of a multi-valued From field; bounded, as
# draft-ietf-dmarc-dmarcbis advises, so a field of many domains cannot cost many lookups.
MAX_AUTHOR_DOMAINS = 5
MAX_DOMAIN_OCTETS = 253

_DISPOSITIONS: dict[str, Disposition] = {
    "none": "none",
    "quarantine": "quarantine",
    "reject": "reject",
}
_SEVERITY: dict[Disposition, int] = {"none": 0, "quarantine": 1, "reject": 2}
# Section 6.6.4: a failing message left out of the pct= sample gets the next weaker policy.
_WEAKER: dict[Disposition, Disposition] = {
    "reject": "quarantine",
    "quarantine": "none",
    "none": "none",
}
_NULL_SENDERS = frozenset({"<>", ""})
_NULL_IDENTITIES = frozenset({"mailfrom", "helo"})
_MAILFROM_IDENTITY = frozenset({"mailfrom"})
# What the stdlib parser calls defects but is valid syntax: the obsolete forms of RFC 5322
# section 4 (e.g. "Dr. Alice <...>") and a UTF-8 local-part (RFC 6532, RFC 8616).
_ACCEPTED_DEFECTS = (email.errors.ObsoleteHeaderDefect, email.errors.NonASCIILocalPartDefect)

# An A-label host name of at least two labels (RFC 5321 section 2.3.5: a fully-qualified
# name; RFC 1035 section 2.3.4: labels of at most 63 octets).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
# RFC 5322 section 3.6.8 ftext; white space before the colon is the obsolete syntax (4.5).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Section 6.4: the record starts with the v tag, whose value is "DMARC1" exactly (%x values
# are case-sensitive); the tag name itself is an ABNF literal, so case-insensitive.
_VERSION_TAG = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
_TAG_NAME = re.compile(r"[a-z][a-z0-9_]*")  # RFC 6376 section 3.2, which section 6.4 adopts
_TAG_WHITE_SPACE = " \t\r\n"
# Section 6.4 dmarc-uri: an RFC 3986 URI with an optional size limit; commas and "!" inside
# the URI must be %-encoded (section 6.2), so neither appears unencoded in the URI itself.
_REPORT_URI = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9._~:/?#\[\]@$&'()*+=-]|%[0-9A-Fa-f]{2})+"
    r"(?:![0-9]+[kmgtKMGT]?)?"
)

# The bundled, offline copy of the list. Its default "*" rule (accept_unknown) makes an
# unlisted TLD such as .test a public suffix, so sub.example.test belongs to example.test.
_PSL = PublicSuffixList()
# pct= sampling needs no reproducibility; the OS source keeps it unpredictable to senders.
_SAMPLER = random.SystemRandom()


@runtime_checkable
class SpfOutcome(Protocol):
    """What DMARC reads of an SPF result (checks/spf.py), without importing it."""

    @property
    def value(self) -> Value: ...

    @property
    def identity(self) -> str: ...  # "helo" or "mailfrom"

    @property
    def domain(self) -> str | None: ...


@runtime_checkable
class DkimOutcome(Protocol):
    """What DMARC reads of a DKIM result (checks/dkim.py): the d= of each signature."""

    @property
    def value(self) -> Value: ...

    @property
    def domain(self) -> str | None: ...


@dataclass(frozen=True)
class DmarcResult:
    """The DMARC outcome for the message's author domain.

    `policy` is what the domain asks for this message: p=, or sp= for a subdomain whose
    record came from the organizational domain, weakened by pct= sampling when the message
    fails. `p`, `sp` and `pct` are the record's (p "none" when section 6.6.3 step 6 replaced
    an invalid one); `reason` is for logs only and never written into the header field.
    """

    value: Value
    from_domain: str | None = None
    policy: Disposition | None = None
    p: Disposition | None = None
    sp: Disposition | None = None
    pct: int | None = None
    reason: str = ""

    method = "dmarc"

    def to_resinfo(self) -> ResInfo:
        properties: list[Property] = []
        # from_domain is a checked A-label when this module made the result; it is checked
        # again here so that no other text can ever reach the field as header.from.
        if self.from_domain is not None and _HOST_NAME.fullmatch(self.from_domain):
            properties.append(Property("header", "from", self.from_domain))
        if self.policy is not None:
            properties.append(Property("policy", "dmarc", self.policy))
        return ResInfo(
            "dmarc", self.value.value, properties=tuple(properties), comment=self._comment()
        )

    def _comment(self) -> str | None:
        """The applied record, e.g. ``p=reject sp=none pct=100 dis=quarantine``.

        dis= is the disposition the domain's policy asks for this message (none when it
        passes); what is actually done with the message is arproxy's local policy.
        """
        if self.p is None:
            return None
        pct = 100 if self.pct is None else self.pct
        parts = [f"p={self.p}", f"sp={self.sp or self.p}", f"pct={pct}"]
        if self.value is Value.PASS:
            parts.append("dis=none")
        elif self.value is Value.FAIL and self.policy is not None:
            parts.append(f"dis={self.policy}")
        return " ".join(parts)


# --- The author domain (section 6.6.1) ------------------------------------------------------


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
        for field in read_header(message).named("from")
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


def to_a_label(domain: str) -> str | None:
    """`domain` lower-cased with U-labels converted to A-labels (section 6.6.1, IDNA 2003
    as Python's codec implements it); None when it is not a valid host name."""
    try:
        a_label = domain.lower().encode("idna").decode("ascii")
        a_label.encode("ascii").decode("idna")  # an A-label given as such must decode
    except UnicodeError:
        return None
    if len(a_label) > MAX_DOMAIN_OCTETS or not _HOST_NAME.fullmatch(a_label):
        return None
    return a_label


def organizational_domain(domain: str) -> str:
    """Section 3.2: the public suffix plus one label; a public suffix is its own."""
    private = _PSL.privatesuffix(domain)
    return private if isinstance(private, str) else domain


# --- The policy record (sections 6.3, 6.4, 6.6.3) -------------------------------------------


class RecordError(ValueError):
    """A DMARC record that cannot be applied: a permerror (section 11.2)."""


@dataclass(frozen=True)
class DmarcRecord:
    p: Disposition
    sp: Disposition | None = None
    adkim: AlignmentMode = "r"
    aspf: AlignmentMode = "r"
    pct: int | None = None


def is_dmarc_record(text: str) -> bool:
    """Section 6.6.3 steps 2 and 4: only records starting with v=DMARC1 are DMARC records."""
    return _VERSION_TAG.match(text) is not None


def parse_record(text: str) -> DmarcRecord:
    """The tags of a DMARC record (one that `is_dmarc_record`); raise RecordError.

    Unknown tags are ignored (section 6.3). An invalid adkim, aspf or pct takes the
    default: section 6.6.3 makes only an invalid p or sp spoil the record, and its step 6
    turns that into p=none when rua= names a valid report URI, else no DMARC processing.
    """
    tags = _tag_list(text)
    p = _disposition(tags.get("p"))
    sp = _disposition(tags.get("sp"))
    adkim, aspf, pct = _mode(tags.get("adkim")), _mode(tags.get("aspf")), _percent(tags.get("pct"))
    if p is None or ("sp" in tags and sp is None):
        if not _has_valid_report_uri(tags.get("rua")):
            raise RecordError("no valid p= (or an invalid sp=) and no valid rua= (6.6.3 step 6)")
        return DmarcRecord("none", None, adkim, aspf, pct)
    return DmarcRecord(p, sp, adkim, aspf, pct)


def _tag_list(text: str) -> dict[str, str]:
    """RFC 6376 section 3.2 tag=value pairs; a malformed or repeated tag spoils the list."""
    tags: dict[str, str] = {}
    for spec in text.split(";"):
        if not spec.strip(_TAG_WHITE_SPACE):
            continue  # the empty spec after a trailing ";"
        name, equals, value = spec.partition("=")
        name = name.strip(_TAG_WHITE_SPACE).lower()
        if not equals or not _TAG_NAME.fullmatch(name):
            raise RecordError(f"malformed tag {spec.strip(_TAG_WHITE_SPACE)[:40]!r}")
        if name in tags:
            raise RecordError(f"tag {name}= appears twice")
        tags[name] = value.strip(_TAG_WHITE_SPACE)
    return tags


def _disposition(value: str | None) -> Disposition | None:
    return None if value is None else _DISPOSITIONS.get(value.lower())


def _mode(value: str | None) -> AlignmentMode:
    return "s" if value is not None and value.lower() == "s" else "r"


def _percent(value: str | None) -> int | None:
    if value is None or not (1 <= len(value) <= 3 and value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if number <= 100 else None


def _has_valid_report_uri(value: str | None) -> bool:
    if value is None:
        return False
    uris = (uri.strip(_TAG_WHITE_SPACE) for uri in value.split(","))
    return any(_REPORT_URI.fullmatch(uri) for uri in uris)


class PolicyTempError(Exception):
    """A DNS lookup of the policy failed temporarily: temperror (section 11.2)."""


@dataclass(frozen=True)
class DiscoveredPolicy:
    record: DmarcRecord
    domain: str  # where the record was found
    from_org_domain: bool  # found by the fallback of step 3: sp= applies

    def requested(self) -> Disposition:
        """Section 6.3 sp: the policy for subdomains is sp=, or p= when sp= is absent."""
        if self.from_org_domain and self.record.sp is not None:
            return self.record.sp
        return self.record.p


async def discover_policy(author: str, dns: Resolver) -> DiscoveredPolicy | None:
    """Section 6.6.3; None when no policy applies (no record, or several: step 5).

    Raise PolicyTempError or RecordError.
    """
    records = await _dmarc_records(author, dns)
    org_domain = organizational_domain(author)
    from_org_domain = not records and org_domain != author
    if from_org_domain:
        records = await _dmarc_records(org_domain, dns)
    if len(records) != 1:
        return None
    found_at = org_domain if from_org_domain else author
    return DiscoveredPolicy(parse_record(records[0]), found_at, from_org_domain)


async def _dmarc_records(domain: str, dns: Resolver) -> list[str]:
    name = f"_dmarc.{domain}"
    if len(name) > MAX_DOMAIN_OCTETS:
        return []  # a name that long cannot exist in the DNS
    lookup = await dns.lookup(name, "TXT")
    if lookup.status is Status.TEMPFAIL:
        raise PolicyTempError(f"{name} TXT: {lookup.reason}")
    texts = (text.decode("utf-8", errors="replace") for text in lookup.texts())
    return [text for text in texts if is_dmarc_record(text)]


# --- Alignment and the result (sections 3.1, 6.6.2, 6.6.4) ----------------------------------


def aligned(identifier: str | None, author: str, mode: AlignmentMode) -> bool:
    """Section 3.1: strict means the same domain, relaxed the same organizational domain."""
    domain = to_a_label(identifier.rstrip(".")) if identifier else None
    if domain is None:
        return False
    if mode == "s":
        return domain == author
    return organizational_domain(domain) == organizational_domain(author)


def aligned_dkim_domain(ctx: CheckContext, author: str, mode: AlignmentMode) -> str | None:
    """The d= of a passing DKIM signature aligned with `author` (section 3.1.1), if any."""
    for result in ctx.prior_of("dkim"):
        if (
            isinstance(result, DkimOutcome)
            and result.value == Value.PASS
            and aligned(result.domain, author, mode)
        ):
            return result.domain
    return None


def aligned_spf_domain(ctx: CheckContext, author: str, mode: AlignmentMode) -> str | None:
    """The SPF-authenticated domain aligned with `author` (section 3.1.2), if any.

    That is the MAIL FROM identity. The HELO identity counts only for the null sender:
    section 3.1.2 excludes HELO "except when required to 'fake' an otherwise null
    reverse-path", which is what RFC 7208 section 2.4 does (postmaster@<HELO name>).
    """
    for result in ctx.prior_of("spf"):
        if (
            isinstance(result, SpfOutcome)
            and result.identity in _spf_identities(ctx)
            and result.value == Value.PASS
            and aligned(result.domain, author, mode)
        ):
            return result.domain
    return None


def aligned_temperrors(ctx: CheckContext, author: str, record: DmarcRecord) -> list[str]:
    """The identities that could have aligned with `author` but ended in temperror, e.g.
    ``["dkim d=example.com", "spf example.com"]``.

    Section 6.6.2 builds DMARC on the SPF and DKIM results; a temperror one might still
    pass on a later attempt (RFC 8601 section 2.7.1: "A later attempt may produce a final
    result"; RFC 7208 section 2.6.6), so without an aligned pass the DMARC result cannot
    be final either: temperror, which section 11.2 defines as the same ("A later attempt
    might produce a final result"). Same identities and alignment as the pass checks.
    """
    found: list[str] = []
    for result in ctx.prior_of("dkim"):
        if (
            isinstance(result, DkimOutcome)
            and result.value == Value.TEMPERROR
            and aligned(result.domain, author, record.adkim)
        ):
            found.append(f"dkim d={result.domain}")
    for result in ctx.prior_of("spf"):
        if (
            isinstance(result, SpfOutcome)
            and result.identity in _spf_identities(ctx)
            and result.value == Value.TEMPERROR
            and aligned(result.domain, author, record.aspf)
        ):
            found.append(f"spf {result.domain}")
    return found


def _spf_identities(ctx: CheckContext) -> frozenset[str]:
    """Section 3.1.2: MAIL FROM; HELO only when it stands in for the null sender."""
    return _NULL_IDENTITIES if ctx.mail_from in _NULL_SENDERS else _MAILFROM_IDENTITY


def sampled(requested: Disposition, pct: int | None, draw: Callable[[], float]) -> Disposition:
    """Section 6.6.4: the policy applies to pct percent of failing mail; the rest gets the
    next weaker one (reject -> quarantine, quarantine -> none)."""
    if pct is None or pct >= 100:
        return requested
    return requested if draw() * 100 < pct else _WEAKER[requested]


async def evaluate(
    ctx: CheckContext, dns: Resolver, author: str, draw: Callable[[], float]
) -> DmarcResult:
    """The DMARC result for one author domain (section 6.6.2).

    pass: an aligned identity passed. temperror: the policy lookup failed temporarily, or
    no aligned identity passed and one that could have aligned ended in temperror (a
    retry may pass it); such a result carries no disposition. fail: no aligned pass, with
    the domain's policy after pct= sampling (section 6.6.4).
    """
    try:
        found = await discover_policy(author, dns)
    except PolicyTempError as exc:
        return DmarcResult(Value.TEMPERROR, author, reason=str(exc))
    except RecordError as exc:
        return DmarcResult(Value.PERMERROR, author, reason=str(exc))
    if found is None:
        return DmarcResult(Value.NONE, author, reason="no single DMARC policy record")
    record, requested = found.record, found.requested()
    via = _aligned_pass(ctx, author, record)
    pending = aligned_temperrors(ctx, author, record) if via is None else []
    if via is not None:
        value, policy, reason = Value.PASS, requested, via
    elif pending:
        value, policy = Value.TEMPERROR, None
        reason = f"no aligned pass; temperror of {', '.join(pending)}"
    else:
        value, policy = Value.FAIL, sampled(requested, record.pct, draw)
        reason = f"no aligned pass; policy of {found.domain}"
    return DmarcResult(
        value, author, policy, p=record.p, sp=record.sp, pct=record.pct, reason=reason
    )


def _aligned_pass(ctx: CheckContext, author: str, record: DmarcRecord) -> str | None:
    dkim_domain = aligned_dkim_domain(ctx, author, record.adkim)
    if dkim_domain is not None:
        return f"aligned DKIM d={dkim_domain}"
    spf_domain = aligned_spf_domain(ctx, author, record.aspf)
    if spf_domain is not None:
        return f"aligned SPF {spf_domain}"
    return None


def strictest(results: Sequence[DmarcResult]) -> DmarcResult:
    """One result for a From field of several domains (section 6.6.1): the failing one
    with the strictest policy, unless a temperror might hide a stricter failure (then the
    temperror, so the message is tried again rather than judged by the weaker policy);
    else an error, which might hide a failure; else a pass."""
    failing = [r for r in results if r.value is Value.FAIL]
    if failing:
        worst = max(failing, key=lambda r: _SEVERITY[r.policy or "none"])
        for result in results:
            if (
                result.value is Value.TEMPERROR
                and _SEVERITY[_possible_policy(result)] > (_SEVERITY[worst.policy or "none"])
            ):
                return result
        return worst
    for value in (Value.TEMPERROR, Value.PERMERROR, Value.PASS):
        for result in results:
            if result.value is value:
                return result
    return results[0]


def _possible_policy(result: DmarcResult) -> Disposition:
    """The strictest disposition a temperror could turn into on a later attempt: the
    stricter of its record's p= and sp=, or reject when the record itself is unknown."""
    if result.p is None:
        return "reject"
    return max((result.p, result.sp or result.p), key=_SEVERITY.__getitem__)


async def check(
    ctx: CheckContext, dns: Resolver, *, draw: Callable[[], float] = _SAMPLER.random
) -> tuple[DmarcResult, ...]:
    """The DMARC result of the message in `ctx`; `draw` gives the pct= sample in [0, 1)."""
    try:
        domains = author_domains(ctx.message)
    except AuthorError as exc:
        return (DmarcResult(Value.PERMERROR, reason=str(exc)),)
    results = await asyncio.gather(*(evaluate(ctx, dns, d, draw) for d in domains))
    return (strictest(results),)


def _on_timeout(ctx: CheckContext) -> tuple[DmarcResult, ...]:
    # A From field that gives no domain is a permerror whatever the DNS would have said.
    try:
        domains = author_domains(ctx.message)
    except AuthorError as exc:
        return (DmarcResult(Value.PERMERROR, reason=str(exc)),)
    return (DmarcResult(Value.TEMPERROR, domains[0], reason="timeout"),)


def _on_crash(ctx: CheckContext) -> tuple[DmarcResult, ...]:
    """The evaluation raised: the same message would make it raise again, so nothing about
    it is temporary (RFC 7489 section 11.2 permerror, never temperror)."""
    try:
        domains = author_domains(ctx.message)
    except AuthorError as exc:
        return (DmarcResult(Value.PERMERROR, reason=str(exc)),)
    return (DmarcResult(Value.PERMERROR, domains[0], reason="evaluation failed"),)


CHECK = Check("dmarc", Stage.AFTER_CHECKS, check, on_timeout=_on_timeout, on_crash=_on_crash)
