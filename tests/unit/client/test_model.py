"""What the probe is asked: credentials and options refuse what they cannot carry."""

from __future__ import annotations

import pytest

from arproxy.client import Credentials, ProbeOptions


def test_credentials_cannot_smuggle_commands() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Credentials("alice", "secret\r\nDELE 1")
    assert "secret" not in repr(Credentials("alice", "secret"))


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        ProbeOptions(timeout=timeout)
