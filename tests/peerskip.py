"""Skipping a test whose real peer is missing, except where it must not be skipped.

A developer without root or a Debian package may skip such a test (the reason says
which peer is missing). CI (`CI=true`, set by the CI runner around `.ci/run`) runs the
test command that installs every peer, so there a missing peer is a failure, never a
silent skip: a skip must not hide an install step that broke.
"""

from __future__ import annotations

import os

import pytest


def unless_peer(missing: bool, reason: str) -> pytest.MarkDecorator:
    """`pytest.mark.skipif(missing, reason=...)`, but never under CI=true."""
    return pytest.mark.skipif(missing and os.environ.get("CI") != "true", reason=reason)
