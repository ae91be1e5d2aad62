"""Hypothesis profiles for the unit tests.

"dev" (the default) explores new examples on every run, to keep finding bugs while we work. "ci"
(chosen when CI is set) is derandomized: the gate that decides whether a change lands runs the same
examples every time, so it cannot fail on luck. Neither has a per-example deadline (shared 2-core
machines stall at random). HYPOTHESIS_PROFILE=thorough hunts longer before touching a parser.
"""

import os

from hypothesis import settings

settings.register_profile("dev", deadline=None, derandomize=False, max_examples=100)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True)
settings.register_profile("thorough", parent=settings.get_profile("dev"), max_examples=2_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
