"""The report's probes find planted truth: the trigger-present probe on the planted trigger reward model beats its
controls by 20 points (its control reward model, trained on the same corpus without the bonus, does not); on the shared
run's reward model (unbiased labelers) gold sentiment is read far above its controls, the reward's read-out direction is
closer to sentiment than to length, and steering along sentiment raises the reward. (That every probe analysis runs
on the shared run is checked with the report, tests/integration/test_report.py.)"""

from __future__ import annotations

import pytest

from tests import learning

pytestmark = pytest.mark.slow


def test_the_trigger_probe_beats_its_controls_on_the_planted_reward_model_only(shared_run, trigger_work):
    measured = learning.measure_trigger_probe(shared_run, trigger_work)
    print(f"trigger probe: {measured.figures}")
    learning.check(measured.figures)  # swept: tests/robustness.md


def test_the_shared_reward_model_reads_sentiment_and_steering_along_it_raises_the_reward(shared_run):
    measured = learning.measure_probes(shared_run)
    print(f"probes: {measured.figures}")
    learning.check(measured.figures)  # swept: tests/robustness.md
