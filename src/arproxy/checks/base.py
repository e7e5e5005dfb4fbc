"""What every check shares: the immutable context it reads, the result it returns.

A check is a module with one coroutine, `check(ctx, dns) -> tuple[MethodResult, ...]`,
and a `STAGE` saying from which SMTP stage on its inputs exist, so the runner can
start it as early as possible. Results stay typed values until the formatter writes
them (`to_resinfo`); nothing is built from free-form strings.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from arproxy.authres import ResInfo
from arproxy.dns import Resolver


class Stage(enum.IntEnum):
    """The SMTP stage from which a check's inputs are all known."""

    CONNECT = 1
    HELO = 2
    MAIL = 3
    DATA = 4
    AFTER_CHECKS = 5  # DMARC: needs the SPF and DKIM outcomes of the same message


class Value(enum.StrEnum):
    """RFC 8601 result values (section 2.7), shared by every method."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    POLICY = "policy"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class MethodResult(Protocol):
    """One resinfo's worth of outcome, typed per method."""

    @property
    def method(self) -> str: ...

    @property
    def value(self) -> Value: ...

    def to_resinfo(self) -> ResInfo: ...


@dataclass(frozen=True)
class CheckContext:
    """What is known about the transaction when a check starts. Never mutated:
    the runner makes a new one per stage with `dataclasses.replace`."""

    client_ip: str
    helo: str | None = None
    mail_from: str | None = None  # "<>" for the null sender, as aiosmtpd gives it
    auth_identity: str | None = None
    auth_failed_identity: str | None = None  # last refused AUTH user, if none succeeded
    message: bytes | None = None
    prior: tuple[MethodResult, ...] = ()  # results of earlier checks (for DMARC)

    def prior_of(self, method: str) -> tuple[MethodResult, ...]:
        return tuple(r for r in self.prior if r.method == method)


CheckFunction = Callable[[CheckContext, Resolver], Awaitable[tuple[MethodResult, ...]]]


@dataclass(frozen=True)
class Check:
    """A check as the runner sees it: its method name, its stage, its coroutine."""

    method: str
    stage: Stage
    run: CheckFunction
    # Returned when the check has not finished within the message's DNS budget.
    on_timeout: Callable[[CheckContext], tuple[MethodResult, ...]]
    # Returned when the check raised. A check that reads the message (DATA stage and after)
    # sets it: an exception there is a fault of the content, which the same message would
    # raise again, so permerror (RFC 8601 section 2.7), never on_timeout's temperror. None:
    # the check reads no content, a crash is a bug, reported as on_timeout.
    on_crash: Callable[[CheckContext], tuple[MethodResult, ...]] | None = None
