"""The report's probes find planted truth: the trigger-present probe on the planted trigger reward model beats its
controls by 20 points (its control reward model, trained on the same corpus without the bonus, does not); on the shared
run's reward model (unbiased labelers) gold sentiment is read far above its controls, the reward's read-out direction is
closer to sentiment than to length, and steering along sentiment raises the reward."""

from __future__ import annotations

import pytest

from rlhf_lens.analyses.core.cache import analyze
from rlhf_lens.runs import Run
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


def test_every_probe_analysis_runs_on_the_shared_run_and_reads_back_from_the_cache(shared_run):
    run = Run.open(shared_run)
    names = [
        "probes.reward_concepts",
        "probes.policy_concepts",
        "probes.reward_directions",
        "probes.reward_steering",
        "probes.policy_steering",
        "probes.reward_over_training",
        "probes.policy_over_training",
    ]
    first = {o.label: o for o in analyze(run, names, quiet=True)}
    assert {label.split(" [")[0] for label, o in first.items() if o.status != "skipped"} == set(names), first
    again = {o.label: o for o in analyze(run, names, quiet=True)}
    assert all(o.status == "cached" for o in again.values())
    for label, outcome in first.items():
        assert outcome.result.df.equals(again[label].result.df), label
    over = again["probes.reward_over_training [reward]"].result
    assert over.meta["checkpoints"] == [c.tag for c in sorted(run.checkpoints("reward"), key=lambda c: c.step)]
    steering = again["probes.policy_steering [policy]"].result
    assert set(steering.df["concept"]) == {"sentiment", "length", "negation"} and len(steering.verdicts) == 3
