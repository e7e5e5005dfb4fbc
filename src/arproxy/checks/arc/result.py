"""The ARC result as RFC 8617 section 10.1 registers it (method `arc`, values none / pass
/ fail, properties smtp.remote-ip and header.oldest-pass), and what local policy needs to
know of the newest ARC set: who sealed it and what that hop recorded."""

from __future__ import annotations

from dataclasses import dataclass

from arproxy.authres import Property, ResInfo
from arproxy.checks.base import Value
from arproxy.checks.dkim.types import writable


@dataclass(frozen=True)
class ArcResult:
    """The chain validation status of the message (RFC 8617 section 5.2).

    `value` is NONE (no ARC set), PASS or FAIL: RFC 8617 registers no other value for
    `arc`. `temporary`: the status is FAIL only because a key lookup failed temporarily;
    a retry might pass, so local policy must not build a permanent decision on it.
    `sealer` is the d= of the newest ARC-Seal as a checked lower-case A-label (None if it
    is not a domain name); `sealer_results` the results that hop recorded in its
    ARC-Authentication-Results, read by our strict parser (None: absent or unparsable).
    `oldest_pass` is RFC 8617 section 5.2 step 5's value (0: every AMS validates).
    `reason` is ours, never the sender's text.
    """

    value: Value
    client_ip: str | None = None
    oldest_pass: int | None = None
    sealer: str | None = None
    sealer_results: tuple[ResInfo, ...] | None = None
    sets: int = 0
    reason: str | None = None
    temporary: bool = False

    method = "arc"

    def to_resinfo(self) -> ResInfo:
        properties: list[Property] = []
        if self.client_ip is not None:
            # RFC 8617 section 10.1: smtp.remote-ip, the address of the client that
            # handed us the message (the hop whose seal we are judging came through it).
            properties.append(Property("smtp", "remote-ip", self.client_ip))
        if self.value is Value.PASS and self.oldest_pass:
            # RFC 8617 section 10.1: header.oldest-pass, the oldest instance whose AMS
            # still validates; 0 (all validate) is not written.
            properties.append(Property("header", "oldest-pass", str(self.oldest_pass)))
        return ResInfo(
            "arc",
            self.value.value,
            reason=None if self.value is not Value.FAIL else writable(self.reason),
            properties=tuple(properties),
        )
