"""Policy-outcome analyses on the shared run's PPO stage: their figures are the trainer's own evaluation figures
(run.json results), and the sample tokens rebuild the logged completions."""

from __future__ import annotations

import pytest

from rlhf_lens.analyses.policy_outcome import analyze_policy_outcome, analyze_policy_trends, analyze_sample_completions
from rlhf_lens.runs import Run

pytestmark = pytest.mark.slow

# our (metric, column) -> the trainer's eval/ key
EVAL_KEYS = {
    ("gold", "mean"): "gold_mean",
    ("gold", "sem"): "gold_sem",
    ("proxy", "mean"): "score_mean",
    ("kl", "mean"): "kl",
    ("length", "mean"): "mean_length",
    ("eos_rate", "mean"): "finished_rate",
}


def test_policy_analyses_reproduce_the_trainers_evaluation(shared_run):
    run = Run.open(shared_run)
    stage = run.stages("policy")[0].name
    results = run.manifest["results"][stage]

    outcome = analyze_policy_outcome(run, stage)
    assert outcome.meta["start_step"] == 0
    for (metric, column), key in EVAL_KEYS.items():
        assert outcome.value("start", metric, column) == pytest.approx(results[f"start_eval/{key}"], rel=0, abs=1e-6), key
        assert outcome.value("final", metric, column) == pytest.approx(results[f"eval/{key}"], rel=0, abs=1e-6), key
    assert outcome.value("start", "kl") == 0.0  # the starting policy is the reference
    assert {v.check for v in outcome.verdicts} == {"gold reward gain", "EOS rate", "length shift"}

    trends = analyze_policy_trends(run, stage)
    final = trends.df[trends.df["step"] == outcome.meta["final_step"]].set_index("metric")
    assert final.loc["gold", "mean"] == pytest.approx(results["eval/gold_mean"], rel=0, abs=1e-6)
    assert trends.meta["steps"][0] == 0 and len(trends.meta["steps"]) >= 2

    samples = analyze_sample_completions(run, stage)
    assert len(samples.df) == 12 and set(samples.df["policy"]) == {"start", "final"}
    tokenizer = run.load_tokenizer(stage)
    eval_rows = run.eval_rollouts(stage).set_index(["step", "prompt_id"])
    for record in samples.df.itertuples():
        logged = eval_rows.loc[(record.step, record.prompt_id)]
        assert "".join(record.tokens) == tokenizer.decode(list(logged["completion_ids"]), skip_special_tokens=False)
        assert list(record.kl_per_token) == pytest.approx(list(logged["kl_per_token"]))
    assert 'class="side"' in str(samples.to_html())
