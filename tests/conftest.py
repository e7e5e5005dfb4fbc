"""Shared test settings and fixtures.

Hypothesis profiles: the default keeps property tests fast enough for every run;
HYPOTHESIS_PROFILE=long searches deeper (e.g. nightly or before a release).
"""

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from .dnsserver import KnotServer

settings.register_profile("fast", max_examples=300, deadline=None)
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(scope="session")
def dns_server() -> Iterator[KnotServer]:
    """Knot serving every zone in tests/fixtures/zones, shared by the whole run."""
    server = KnotServer()
    yield server
    server.close()
