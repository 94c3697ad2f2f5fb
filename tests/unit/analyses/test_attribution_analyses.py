"""The attribution analyses registered for runs, on planted reward models whose reward depends on the last word
alone (+R after "great" or "zorp", -R after "awful"): attributions over checkpoints, and a generative reward
stage's verdict attributed with its own critique teacher-forced. (The randomisation check is tested on a trained
reward model: on these 3-token texts position alone keeps random maps alike, BOS at 0 and the scored last token on top.)"""

from __future__ import annotations

import pandas as pd
import pytest

from rlhf_lens.analyses import get_analysis, run_task
from rlhf_lens.analyses.attribution import (
    analyze_reward_over_training,
    attribution_over_training,
    generative_integrated_gradients,
)
from rlhf_lens.analyses.core.cache import Task
from tests.unit.analyses.reward_runs import PROMPTS, good, planted_scorer, random_lm, sentiment_eval_records, write_reward_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Stage "reward": the reversed planted model at step 1, the planted one as final."""
    saves = [("step-000001", 1, planted_scorer(sign=-1.0), {}), ("final", 2, planted_scorer(), {})]
    return write_reward_run(tmp_path_factory.mktemp("attr") / "run", sentiment_eval_records(), {"reward": saves})


def test_attributions_over_training_follow_the_reward_model_as_it_flips(run):
    result = analyze_reward_over_training(run, stage="reward")
    assert result.meta["tags"] == ["step-000001", "final"]
    assert set(result.df.groupby("tag")["text"].nunique()) == {12}  # every held-out text under each checkpoint
    words = result.word_table(min_count=1).set_index(["tag", "word_text"])["mean_attribution"]
    # the planted reward is +-R on the last word: its sign flips between the checkpoints, and so must the attributions
    assert words["step-000001", "great"] < -1.0 < 1.0 < words["final", "great"]
    assert words["step-000001", "awful"] > 1.0 > -1.0 > words["final", "awful"]
    for summary in result.meta["checkpoints"]:
        assert summary["within tolerance"] == 1.0
    assert "<svg" in str(result.to_html()) or "<img" in str(result.to_html())
    fewer = analyze_reward_over_training(run, stage="reward", texts=4)  # a setting: what a direct call computes
    assert set(fewer.df.groupby("tag")["text"].nunique()) == {4} and fewer.meta["method"] == "reward_integrated_gradients"


def test_a_setting_changes_the_result_and_the_cached_result_renders_its_own_settings(run):
    words = get_analysis("attribution.reward_words")
    assert dict(words.params) == {"texts": 128, "min_count": 5, "complete_share": 0.95, "first_steps": 16, "abs_tolerance": 1e-3}
    default = run_task(run, Task(words, "reward"), force=True)
    changed = run_task(run, Task(words, "reward", {"texts": 6, "min_count": 1}), force=True)
    assert default.result.meta["texts"] == 12 and changed.result.meta["texts"] == 6
    assert len(changed.result.df) != len(default.result.df)
    again = run_task(run, Task(words, "reward", {"texts": 6, "min_count": 1}))
    assert again.status == "cached"
    pd.testing.assert_frame_equal(again.result.df, changed.result.df)
    html = str(again.result.to_html())
    assert "seen at least 1 times" in html and "seen at least 5 times" not in html
    assert "seen at least 5 times" in str(run_task(run, Task(words, "reward")).result.to_html())


def test_over_training_refuses_unknown_tags_and_stages_of_other_kinds(run):
    with pytest.raises(ValueError, match="no complete checkpoint"):
        attribution_over_training(run, "reward", ["the food"], [good(0)], tags=["step-000099"])


def test_a_single_checkpoint_stage_is_skipped_with_the_reason(tmp_path):
    one = write_reward_run(tmp_path / "one", sentiment_eval_records(), {"reward": [("final", 1, planted_scorer(), {})]})
    reason = get_analysis("attribution.reward_over_training").needs.requires(one, "reward")
    assert reason and "save_every" in reason


def test_a_generative_reward_stage_is_attributed_through_its_verdict_with_its_own_critique(tmp_path):
    """The registered word analysis reads a generative stage as the policy stage did: its own 3-token critique first."""
    model = random_lm()
    meta = {"reward_kind": "generative", "reward_offset": 0.0, "critique_first": True, "critique_max_tokens": 3}
    gen = write_reward_run(tmp_path / "gen", sentiment_eval_records(), {"reward": [("final", 1, model, {})]}, meta=meta)
    outcome = run_task(gen, Task(get_analysis("attribution.reward_words"), "reward"))
    assert outcome.result is not None, outcome
    assert outcome.result.meta["within_tolerance"] >= 0.95
    direct = generative_integrated_gradients(
        model, gen.load_tokenizer("reward"), [PROMPTS[0]], [good(0)], critiques="model", critique_max_tokens=3
    )
    assert set(direct.df["part"]) >= {"prompt", "completion", "critique", "template"}
    assert get_analysis("attribution.sanity").needs.requires(gen, "reward") is not None  # no score head to randomise
