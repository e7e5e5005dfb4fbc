"""SPF's rules (RFC 7208; RFC 8601 section 2.7.2): identities, result values, which to report.

No pyspf and no DNS here: what a check evaluates (`helo_target`, `mailfrom_target`), how
pyspf's outcome becomes a value (`judge`), and which of the two identities' results is
written (`reported`, `keep_reported`).

Which identity is reported (RFC 8601 section 4: "only the parameter that yielded the result
is included"), decided by `reported`:

- a non-null MAIL FROM: its result, whatever the HELO check gave. RFC 7208 section 2.3 lets a
  verifier stop at a definitive HELO result, but the MAIL FROM identity is the one receivers
  and DMARC (RFC 7489 section 4.1) act on, so it is the one we report when we have it;
- the null sender: RFC 7208 section 2.4 makes the MAIL FROM identity postmaster@<HELO>, which
  is exactly the HELO check, so the MAIL FROM check returns nothing and `reported` falls
  back to the HELO result, written as `smtp.helo`.

`policy` (RFC 8601 section 2.7.2: SPF authorized the client, but local policy finds the result
unacceptable) is our local rule for a pass whose deciding mechanism, in the sender domain's own
record, is `all` (`+all`, `all`, `+ALL`): such a record authorizes every host on the Internet,
so the pass says nothing about the sender, and DMARC must not align on it. Only the top-level
record's matching mechanism is looked at, so the rule also fires for `include:other all`
when the include did not match (the client was authorized by `all`, not by the include);
a pass by an `include:` that matched (even through the included record's own `+all`), or by
any other mechanism before `all`, stays a pass.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from arproxy import names
from arproxy.authres import Property, ResInfo
from arproxy.checks.base import CheckContext, MethodResult, Value

Identity = Literal["helo", "mailfrom"]

# RFC 7208 section 2.6, as pyspf spells the results with strict=True. pyspf has "ambiguous"
# only in its harsh mode (strict=2), which we never use.
_RESULT_VALUES = {
    "pass": Value.PASS,
    "fail": Value.FAIL,
    "softfail": Value.SOFTFAIL,
    "neutral": Value.NEUTRAL,
    "none": Value.NONE,
    "permerror": Value.PERMERROR,
    "temperror": Value.TEMPERROR,
}

_COMMENTS = {
    Value.PASS: "{ip} is authorized",
    Value.FAIL: "{ip} is not authorized",
    Value.SOFTFAIL: "{ip} is probably not authorized",
    Value.NEUTRAL: "{ip} is neither authorized nor refused",
    Value.POLICY: "{ip} is authorized only by +all: not accepted by local policy",
    Value.TEMPERROR: "temporary DNS error",
    Value.PERMERROR: "unusable SPF record",
}


class UnexpectedSpfResult(RuntimeError):
    """pyspf returned a result that RFC 7208 section 2.6 does not define."""


@dataclass(frozen=True)
class SpfResult:
    """The SPF result for one identity.

    `domain` is the HELO name or the MAIL FROM domain (no local-part): lower-cased ASCII
    (A-labels) when it is a domain name, else the client's text as received, which is kept
    for logs and never written. `reason` (pyspf's explanation, possibly from an exp= record
    of the domain) is for logs only.
    """

    value: Value
    identity: Identity
    domain: str
    client_ip: str | None = None
    reason: str = ""

    method = "spf"

    def to_resinfo(self) -> ResInfo:
        # Client text is written only once validated as a domain name (or, for HELO, an
        # address literal): anything else could carry characters the formatter refuses,
        # or quoted text that a careless reader takes for more results. Without it the
        # property is dropped; the result still stands.
        identity = _reportable_identity(self.identity, self.domain)
        properties = (Property("smtp", self.identity, identity),) if identity else ()
        return ResInfo("spf", self.value.value, properties=properties, comment=self._comment())

    def _comment(self) -> str:
        if self.value is Value.NONE:
            return "no SPF record" if identity_domain(self.domain) else "no domain name to check"
        return _COMMENTS[self.value].format(ip=_ip_text(self.client_ip) or "the client")


def reported(helo: SpfResult | None, mailfrom: SpfResult | None) -> SpfResult | None:
    """The one SPF result to write: MAIL FROM's when there is one, else HELO's.

    RFC 8601 section 4 reports only the identity that yielded the result. A MAIL FROM result
    exists for every non-null sender (a check that ran out of time still gives temperror);
    for the null sender RFC 7208 section 2.4 makes the identity postmaster@<HELO>, which is
    the HELO check, so its result is the one to report. A definitive HELO result is not
    preferred over the MAIL FROM one, although RFC 7208 section 2.3 would allow it: the MAIL
    FROM identity is what consumers and DMARC alignment (RFC 7489 section 4.1) look at.
    """
    return mailfrom if mailfrom is not None else helo


def keep_reported(results: Sequence[MethodResult]) -> tuple[MethodResult, ...]:
    """The SPF checks' merge hook: of all the message's SPF results, the one `reported`
    says to write (none if there is none)."""
    spf_results = [r for r in results if isinstance(r, SpfResult)]
    helo = next((r for r in spf_results if r.identity == "helo"), None)
    mailfrom = next((r for r in spf_results if r.identity == "mailfrom"), None)
    chosen = reported(helo, mailfrom)
    return () if chosen is None else (chosen,)


# --- the identities --------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def identity_domain(text: str) -> str | None:
    """`text` as a domain SPF can check (lower-case ASCII), or None if it is not one.
    Cached per worker (a pure function, asked four times a message for the same few
    HELO and sender domains).

    RFC 7208 section 4.3: a malformed domain or one that is not multi-label gives `none`
    without any lookup; so does an address literal or other non-name (sections 2.3, 2.6.1).
    U-labels become A-labels (RFC 8616 section 4). The top label must not be all digits
    (RFC 7208 section 7.1, toplabel), so a bare IPv4 address is not a name either.
    """
    return names.idna2003_host_name(text.removesuffix("."), min_labels=2, numeric_top=False)


def _address_literal(text: str) -> str | None:
    """An RFC 5321 section 4.1.3 IPv4 or IPv6 address literal, normalised, or None."""
    address = names.parse_address_literal(text)
    return None if address is None else names.format_address_literal(address)


def _reportable_identity(identity: Identity, text: str) -> str | None:
    domain = identity_domain(text)
    if domain is None and identity == "helo":
        return _address_literal(text)
    return domain


def _ip_text(ip: str | None) -> str | None:
    """The client address for a comment, IPv4-mapped IPv6 shown as IPv4, or None."""
    if ip is None:
        return None
    try:
        return str(names.client_address(ip))
    except ValueError:
        return None


@dataclass(frozen=True)
class SpfRequest:
    """One check_host() call (RFC 7208 section 4.1): <ip>, <sender> split, and the HELO name.

    `helo` only feeds the %{h} macro (section 7.3).
    """

    ip: str
    local_part: str
    domain: str
    helo: str

    @property
    def sender(self) -> str:
        return f"{self.local_part}@{self.domain}"


@dataclass(frozen=True)
class Target:
    """What a check evaluates: the identity, the domain reported, the request (None: none)."""

    identity: Identity
    domain: str
    request: SpfRequest | None


def _helo_for_macros(ctx: CheckContext) -> str:
    # pyspf needs a value for %{h}; an unusable HELO must not become part of a query name.
    return identity_domain(ctx.helo or "") or "unknown"


def helo_target(ctx: CheckContext) -> Target | None:
    if ctx.helo is None:
        return None
    domain = identity_domain(ctx.helo)
    if domain is None:
        return Target("helo", ctx.helo, None)
    # Section 2.3: the HELO identity is checked as <sender> = postmaster@<HELO> (section 4.3).
    return Target("helo", domain, SpfRequest(ctx.client_ip, "postmaster", domain, domain))


def mailfrom_target(ctx: CheckContext) -> Target | None:
    if ctx.mail_from is None:
        return None
    mailbox = _split_reverse_path(ctx.mail_from)
    if mailbox is None:
        return None  # the null sender: the HELO check covers it (section 2.4)
    local_part, domain_text = mailbox
    domain = identity_domain(domain_text)
    if domain is None:
        return Target("mailfrom", domain_text, None)
    request = SpfRequest(ctx.client_ip, local_part or "postmaster", domain, _helo_for_macros(ctx))
    return Target("mailfrom", domain, request)


def _split_reverse_path(path: str) -> tuple[str, str] | None:
    """(local-part, domain text) of a MAIL FROM path, or None for the null sender "<>".

    Section 4.3: an empty local-part becomes "postmaster" (done by the caller). A path
    without "@" has no domain: its domain text is empty, which is not a domain (none).
    """
    path = path.strip()
    if path.startswith("<") and path.endswith(">"):
        path = path[1:-1]
    if path.startswith("@") and ":" in path:
        path = path.split(":", 1)[1]  # an RFC 5321 source route (obsolete): drop it
    if not path:
        return None
    local_part, at, domain = path.rpartition("@")
    return (local_part, domain) if at else ("", "")


def judge(outcome: str, explanation: str, mechanism: str) -> tuple[Value, str]:
    """The value and reason of one evaluation from pyspf's result string, its explanation
    and the top-level mechanism that matched ("" if none): `spf_value`, then the local
    `policy` rule for a pass by `all` (module docstring)."""
    value = spf_value(outcome)
    if value is Value.PASS and _authorizes_every_host(mechanism):
        return Value.POLICY, f"pass by {mechanism} only"
    return value, explanation


def _authorizes_every_host(mechanism: str) -> bool:
    """The mechanism that matched in the sender domain's own record (pyspf's, as written)
    is `all` or `+all`, in any case (RFC 7208 section 4.6.1: mechanism names are
    case-insensitive). Only the top-level record counts: `include:x all` whose include did
    not match is a pass by `all` (the rule fires); an include that matched, even through
    the included record's own `+all`, is reported by pyspf as the include (it does not)."""
    return mechanism.lower().removeprefix("+") == "all"


def spf_value(outcome: str) -> Value:
    """The RFC 8601 value of a pyspf result string."""
    try:
        return _RESULT_VALUES[outcome]
    except KeyError:
        raise UnexpectedSpfResult(f"pyspf returned {outcome!r}") from None
