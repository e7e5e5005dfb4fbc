"""The outcome protocols' cached conformance (checks.base.is_*_outcome) answers as
isinstance() does, for every result class the checks produce and for look-alikes; and
every result class is a frozen dataclass, the condition under which one answer per class
is right for each instance."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from arproxy.checks.arc.result import ArcResult
from arproxy.checks.auth import AuthResult
from arproxy.checks.base import (
    ArcOutcome,
    DkimOutcome,
    DmarcOutcome,
    SpfOutcome,
    is_arc_outcome,
    is_dkim_outcome,
    is_dmarc_outcome,
    is_spf_outcome,
)
from arproxy.checks.dkim.types import DkimResult
from arproxy.checks.dmarc.result import DmarcResult
from arproxy.checks.iprev import IprevResult
from arproxy.checks.spf.rules import SpfResult

RESULT_CLASSES = [ArcResult, AuthResult, DkimResult, DmarcResult, IprevResult, SpfResult]
GUARDS = [
    (is_spf_outcome, SpfOutcome),
    (is_dkim_outcome, DkimOutcome),
    (is_dmarc_outcome, DmarcOutcome),
    (is_arc_outcome, ArcOutcome),
]


def an_instance(cls: type) -> Any:
    """An instance without running __init__'s checks: the fields set to None."""
    instance = object.__new__(cls)
    for field in dataclasses.fields(cls):
        object.__setattr__(instance, field.name, None)
    return instance


@pytest.mark.parametrize("cls", RESULT_CLASSES)
def test_every_result_class_is_a_frozen_dataclass(cls: type) -> None:
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", RESULT_CLASSES)
@pytest.mark.parametrize(("guard", "protocol"), GUARDS)
def test_the_cached_answer_is_isinstances(cls: type, guard: Any, protocol: Any) -> None:
    instance = an_instance(cls)
    assert guard(instance) == isinstance(instance, protocol)
    assert guard(an_instance(cls)) == isinstance(instance, protocol)  # the remembered one


class LooksLikeSpf:
    value = None
    identity = "helo"
    domain = None


def test_look_alikes_and_strangers() -> None:
    assert is_spf_outcome(LooksLikeSpf()) and not is_dkim_outcome(object())
    assert not is_dmarc_outcome(LooksLikeSpf()) and not is_arc_outcome(None)
    # Some result class conforms to each protocol (else the checks above prove little).
    for guard, _ in GUARDS:
        assert any(guard(an_instance(cls)) for cls in RESULT_CLASSES)
