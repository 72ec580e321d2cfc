"""Test-suite settings shared by every module."""

from hypothesis import settings

# Hypothesis checks properties, not speed: its default 200 ms per-example deadline turns a loaded 2-core
# machine into flaky failures (speed is shown by benchmarks/, never by tests).
settings.register_profile("modellineage", deadline=None)
settings.load_profile("modellineage")
