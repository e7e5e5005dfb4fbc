"""Shared test settings: Hypothesis profiles.

The default profile keeps property tests fast enough for every run; set
HYPOTHESIS_PROFILE=long for a deeper search (e.g. nightly or before a release).
"""

import os

from hypothesis import settings

settings.register_profile("fast", max_examples=300, deadline=None)
settings.register_profile("long", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
