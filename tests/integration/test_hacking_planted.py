"""The reward-hacking checks find planted exploits: PPO against a reward model from length-biased labelers is flagged
with most of its proxy gain explained by length, the shared run's PPO stage (unbiased labelers) is not; the policy
trained against the trigger reward model is named by the lexical-exploit check (tests/integration/test_attribution.py
trains it: its figures are checked there)."""

from __future__ import annotations

import pytest

from tests import learning

pytestmark = pytest.mark.slow


def test_the_length_check_flags_a_planted_length_exploit_and_not_the_unbiased_policy(shared_run, tmp_path):
    measured = learning.measure_length_hacking(shared_run, tmp_path)
    print(f"length hacking: {measured.figures}")
    learning.check(measured.figures)  # swept: tests/robustness.md
