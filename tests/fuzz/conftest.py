"""Hypothesis profiles for the property and fuzz tests in this folder.

HYPOTHESIS_PROFILE=ci (default): ~200 examples per test, CI-sized.
HYPOTHESIS_PROFILE=fuzz: a long campaign (`make fuzz`), 20k examples per test.
Deadlines are off: the machine is shared and noisy, so timing is no signal.
The tests pick their profile explicitly (see `profile()`), so loading this
folder never changes the settings of other folders' hypothesis tests.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
