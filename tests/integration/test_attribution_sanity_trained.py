"""The model-randomisation sanity check on the shared run's trained reward model, as the report runs it: integrated
gradients passes (its maps lose their rank correlation with the trained model's once the weights are random) and a
method that ignores the model fails. (Not test_attribution_sanity.py: that basename is the unit test's, and pytest's
default import mode refuses two test modules of one basename in folders without __init__.py.)"""

from __future__ import annotations

import pytest

from rlhf_lens.analyses import get_analysis
from rlhf_lens.analyses.attribution.analyses import heldout_texts
from rlhf_lens.analyses.attribution.sanity import randomisation_sanity_check
from rlhf_lens.runs import Run
from tests import learning
from tests.unit.analyses.test_attribution_sanity import model_blind

pytestmark = pytest.mark.slow


def test_integrated_gradients_passes_on_the_trained_reward_model(shared_run):
    measured = learning.measure_attribution_sanity(shared_run)
    print(f"max |rank correlation| with the trained maps: {measured.figures}")
    learning.check(measured.figures)  # swept over training seeds and threads: tests/robustness.md


def test_a_model_blind_method_fails_on_the_trained_reward_model(shared_run):
    run = Run.open(shared_run)
    prompts, completions = heldout_texts(run, "reward", get_analysis("attribution.sanity").params["texts"])
    blind = randomisation_sanity_check(run.load_model("reward"), run.load_tokenizer("reward"), prompts, completions, method=model_blind)
    (verdict,) = blind.verdicts
    assert verdict.level == "flag" and "fail the Adebayo sanity check" in verdict.evidence
    assert (blind.df[["spearman", "spearman_abs"]] > 0.999).all().all()
