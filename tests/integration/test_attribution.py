"""Attribution finds planted truth: the trigger word the labelers reward tops the words of the texts that hold it,
for integrated gradients and for ablation, and it does not on the control reward model; after PPO against that
reward model, the trigger carries the largest log-ratio against the reference in the policy's own completions, and the
report's lexical-exploit check names it."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_lens.runs import Run
from tests import learning

pytestmark = pytest.mark.slow


def test_attribution_puts_the_planted_trigger_on_top_and_the_control_does_not(shared_run, trigger_work):
    learning.check(learning.measure_trigger_attribution(shared_run, trigger_work).figures)  # swept: tests/robustness.md


def test_alignment_log_ratio_puts_the_planted_trigger_on_top_after_ppo_against_it(shared_run, trigger_work):
    measured = learning.measure_alignment_trigger(shared_run, trigger_work)
    learning.check(measured.figures)  # swept: tests/robustness.md; includes the lexical-exploit check naming "zorp"
    print(f"trigger: {measured.figures}")


def test_the_reward_models_word_attributions_are_complete_and_follow_human_valence(shared_run):
    measured = learning.measure_reward_words(shared_run)
    learning.check(measured.figures)  # >= 95% of texts within the completeness tolerance; Spearman with VADER > 0.5
    print(f"word attribution vs VADER valence: Spearman {measured.figures['attribution/valence_spearman']:.3f}")


def test_the_alignment_analysis_recomputes_the_log_ratios_the_trainer_recorded(shared_run):
    """The report's alignment log-ratio of the policy's own final completions equals, token for token, the
    log-probabilities the PPO stage wrote beside its eval samples (policy and reference)."""
    from rlhf_lens.analyses.attribution import analyze_alignment

    run = Run.open(shared_run)
    result = analyze_alignment(run, stage="policy")
    samples = run.eval_rollouts("policy")
    final = samples[samples["step"] == samples["step"].max()].sort_values("prompt_id").head(len(result.texts))
    recorded = np.concatenate([np.asarray(p) - np.asarray(r) for p, r in zip(final["logprobs"], final["ref_logprobs"])])
    assert result.meta["reference"] == "sft/final"
    np.testing.assert_allclose(result.df["log_ratio"].to_numpy(), recorded, atol=1e-4)
    assert len(result.words) > 10
