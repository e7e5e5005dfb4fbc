"""The DMARC result as RFC 7489 section 11.2 registers it, with our comment."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from arproxy import names
from arproxy.authres import Property, ResInfo
from arproxy.checks.base import ArcOverride, Disposition, Value

AlignmentMode = Literal["r", "s"]


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
    # Set by local policy (arproxy.policy) when a trusted ARC sealer vouches for a failing
    # message: the policy is not applied, the result stays what RFC 7489 says.
    override: ArcOverride | None = None

    method = "dmarc"

    def with_override(self, override: ArcOverride) -> DmarcResult:
        return replace(self, override=override)

    def to_resinfo(self) -> ResInfo:
        properties: list[Property] = []
        # from_domain is a checked A-label when this module made the result; it is checked
        # again here so that no other text can ever reach the field as header.from.
        if self.from_domain is not None and _is_a_label_name(self.from_domain):
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
            return None  # no record: no policy, so nothing to override either
        pct = 100 if self.pct is None else self.pct
        parts = [f"p={self.p}", f"sp={self.sp or self.p}", f"pct={pct}"]
        if self.value is Value.PASS:
            parts.append("dis=none")
        elif self.value is Value.FAIL and self.policy is not None:
            parts.append(f"dis={self.policy}")
        comment = " ".join(parts)
        if self.override is not None:
            comment += f"; policy not applied: ARC sealed by {self.override.sealer}"
        return comment


def _is_a_label_name(domain: str) -> bool:
    """A lower-case ASCII host name of at least two labels (RFC 5321 section 2.3.5)."""
    return domain == domain.lower() and names.is_host_name(domain, min_labels=2)
