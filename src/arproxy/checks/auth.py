"""auth (RFC 8601 section 2.7.4): the outcome of SMTP AUTH for this session.

No DNS; the session knows. A session that authenticated gets
`auth=pass smtp.auth=<identity>`, even after failed attempts; one whose attempts all
failed gets `auth=fail smtp.auth=<last identity tried>`; one that never tried gets
no auth result at all (an unauthenticated MTA-to-MTA session is the normal case,
not a failure).
"""

from __future__ import annotations

from dataclasses import dataclass

from arproxy.authres import Property, ResInfo
from arproxy.checks.base import Check, CheckContext, Stage, Value
from arproxy.dns import Resolver


@dataclass(frozen=True)
class AuthResult:
    value: Value
    identity: str

    method = "auth"

    def to_resinfo(self) -> ResInfo:
        identity = Property("smtp", "auth", self.identity)
        return ResInfo("auth", self.value.value, properties=(identity,))


async def check_auth(ctx: CheckContext, dns: Resolver) -> tuple[AuthResult, ...]:
    if ctx.auth_identity is not None:
        return (AuthResult(Value.PASS, ctx.auth_identity),)
    if ctx.auth_failed_identity is not None:
        return (AuthResult(Value.FAIL, ctx.auth_failed_identity),)
    return ()


def _on_timeout(ctx: CheckContext) -> tuple[AuthResult, ...]:
    return ()  # cannot happen: no I/O


CHECK = Check("auth", Stage.DATA, check_auth, on_timeout=_on_timeout)
