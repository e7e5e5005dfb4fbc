"""What every check shares: the immutable context it reads, the result it returns.

A check is a coroutine, `check(ctx, dns) -> tuple[MethodResult, ...]`, declared as a
`Check` with the SMTP stage from which its inputs exist, so the runner can start it as
early as possible. DNS is passed in; a thread pool a check needs is bound by the runner
from the worker's resources (arproxy.resources), never created by the check. Results
stay typed values until the formatter writes them (`to_resinfo`); nothing is built from
free-form strings.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeGuard, runtime_checkable

from arproxy.authres import ResInfo
from arproxy.dns import Resolver
from arproxy.header import Header, header_of


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


# RFC 7489 section 6.3 p=/sp= values: what a DMARC domain asks for failing mail.
Disposition = Literal["none", "quarantine", "reject"]


@runtime_checkable
class SpfOutcome(Protocol):
    """What DMARC reads of an SPF result (checks/spf), without importing it."""

    @property
    def value(self) -> Value: ...

    @property
    def identity(self) -> str: ...  # "helo" or "mailfrom"

    @property
    def domain(self) -> str | None: ...


@runtime_checkable
class DkimOutcome(Protocol):
    """What DMARC reads of a DKIM result (checks/dkim): the d= of each signature."""

    @property
    def value(self) -> Value: ...

    @property
    def domain(self) -> str | None: ...


@dataclass(frozen=True)
class ArcOverride:
    """Local policy's decision not to apply a failing DMARC policy because a trusted ARC
    sealer vouches for the message (arproxy.policy): who sealed, and what its hop
    recorded that authenticated the author (e.g. ``dmarc=pass``). Logged as
    ``arc override by <sealer>``; the DMARC result itself stays ``fail`` (RFC 7489)."""

    sealer: str  # the newest ARC-Seal's d=, a lower-case A-label
    basis: str  # our text, built from checked values only

    def __str__(self) -> str:
        return f"arc override by {self.sealer}"


@runtime_checkable
class DmarcOutcome(MethodResult, Protocol):
    """What local policy (arproxy.policy) reads of a DMARC result (checks/dmarc)."""

    @property
    def from_domain(self) -> str | None: ...

    @property
    def policy(self) -> Disposition | None: ...  # after pct= sampling

    @property
    def override(self) -> ArcOverride | None: ...  # set by local policy only

    def with_override(self, override: ArcOverride) -> DmarcOutcome:
        """The same result, its policy not applied because of `override`."""
        ...


@runtime_checkable
class ArcOutcome(MethodResult, Protocol):
    """What local policy reads of an ARC result (checks/arc): the chain's status, the
    newest seal's d= (checked A-label or None), what that hop recorded in its
    ARC-Authentication-Results (None: absent or unparsable), and whether a fail is
    only a DNS failure (`temporary`)."""

    @property
    def sealer(self) -> str | None: ...

    @property
    def sealer_results(self) -> tuple[ResInfo, ...] | None: ...

    @property
    def temporary(self) -> bool: ...


# isinstance() against a runtime-checkable protocol, remembered per class (see _conforms).
_CONFORMING: dict[tuple[type, Any], bool] = {}


def _conforms(result: object, protocol: Any) -> bool:
    """`isinstance(result, protocol)` for one of the outcome protocols above, answered
    once per class: typing's check looks up every member of the protocol on each call
    (tens of microseconds, several times per message), and the results that reach it
    are frozen dataclasses, whose members are the same for every instance of a class."""
    key = (type(result), protocol)
    found = _CONFORMING.get(key)
    if found is None:
        found = _CONFORMING[key] = isinstance(result, protocol)
    return found


def is_spf_outcome(result: object) -> TypeGuard[SpfOutcome]:
    return _conforms(result, SpfOutcome)


def is_dkim_outcome(result: object) -> TypeGuard[DkimOutcome]:
    return _conforms(result, DkimOutcome)


def is_dmarc_outcome(result: object) -> TypeGuard[DmarcOutcome]:
    return _conforms(result, DmarcOutcome)


def is_arc_outcome(result: object) -> TypeGuard[ArcOutcome]:
    return _conforms(result, ArcOutcome)


@dataclass(frozen=True)
class CheckContext:
    """What is known about the transaction when a check starts. Never mutated:
    the runner makes a new one per stage with `dataclasses.replace`."""

    client_ip: str
    helo: str | None = None
    mail_from: str | None = None  # "<>" for the null sender, as aiosmtpd gives it
    auth_identity: str | None = None
    auth_failed_identity: str | None = None  # last refused AUTH user, if none succeeded
    # The content; in the SMTP path (and `arproxy check`) an arproxy.header.Message, which
    # carries the header intake read, so that `header` below reads nothing again.
    message: bytes | None = None
    prior: tuple[MethodResult, ...] = ()  # results of earlier checks (for DMARC)

    @property
    def header(self) -> Header | None:
        """The message's header (arproxy.header, the one reader), None before DATA: the
        one reading intake made for a Message, else read now (a test's plain bytes)."""
        return None if self.message is None else header_of(self.message)

    def prior_of(self, method: str) -> tuple[MethodResult, ...]:
        return tuple(r for r in self.prior if r.method == method)


CheckFunction = Callable[[CheckContext, Resolver], Awaitable[tuple[MethodResult, ...]]]
# All of one method's results for a message in, the ones to report out.
MergeFunction = Callable[[Sequence[MethodResult]], tuple[MethodResult, ...]]


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
    # Which of this method's results the field carries, when several checks of the method
    # ran (SPF: HELO and MAIL FROM, RFC 8601 section 4); None keeps them all. The method's
    # rule, declared by its check: the runner only applies it.
    merge: MergeFunction | None = None
