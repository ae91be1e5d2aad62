"""Hypothesis profiles for the unit tests.

"ci" is the default: no per-example deadline (shared 2-core runners stall at random) and enough
examples to find the usual parser bugs while the whole unit suite stays fast. Pick another
profile with HYPOTHESIS_PROFILE=thorough for a longer hunt before touching a parser.
"""

import os

from hypothesis import settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=False,
    max_examples=100,
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=2_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
