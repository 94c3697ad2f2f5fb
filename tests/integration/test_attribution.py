"""Reward attribution finds planted truth: the trigger word the labelers reward tops the words of the texts that
hold it, for integrated gradients and for ablation, and it does not on the control reward model."""

from __future__ import annotations

import pytest

from tests import learning

pytestmark = pytest.mark.slow


def test_attribution_puts_the_planted_trigger_on_top_and_the_control_does_not(shared_run, tmp_path):
    learning.check(learning.measure_trigger_attribution(shared_run, tmp_path).figures)  # swept: tests/robustness.md


def test_the_reward_models_word_attributions_are_complete_and_follow_human_valence(shared_run):
    measured = learning.measure_reward_words(shared_run)
    learning.check(measured.figures)  # >= 95% of texts within the completeness tolerance; Spearman with VADER > 0.5
    print(f"word attribution vs VADER valence: Spearman {measured.figures['attribution/valence_spearman']:.3f}")
