"""The reward-model analyses on a planted reward model (its reward depends on the last word alone) and planted
held-out feedback: figures worked out by hand, equal to what the trainer's own evaluation wrote into meta.json."""

from __future__ import annotations

import math
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rlhf_lens.analyses import _heldout, get_analysis, run_task
from rlhf_lens.analyses.core.cache import Task
from rlhf_lens.analyses.reward_model import analyze_reward_calibration, analyze_reward_checkpoints, analyze_reward_length
from rlhf_lens.models import judge_texts
from rlhf_lens.runs.jsonsafe import to_jsonable
from rlhf_lens.tasks import get_task
from rlhf_lens.tasks.agreement import sigmoid
from tests.unit.analyses.reward_runs import (
    LONG_BAD,
    LONG_GOOD,
    PROMPTS,
    SHORT_BAD,
    SHORT_GOOD,
    R,
    lengthy_eval_records,
    planted_reward,
    planted_scorer,
    random_lm,
    sentiment_eval_records,
    word_tokenizer,
    write_reward_run,
)

MY_ANALYSES = (
    "feedback.counts",
    "feedback.labelers",
    "feedback.disputed",
    "reward_model.checkpoints",
    "reward_model.calibration",
    "reward_model.length",
)


def trainer_metrics(model, records: list[dict]) -> dict:
    """What the reward stage writes into meta.json: its own evaluation of the in-memory model."""
    from rlhf_lens.training.reward.feedback import Feedback
    from rlhf_lens.training.reward.objectives import evaluate_reward, reward_function

    feedback = Feedback(train=[], eval_pairs=records, centring_texts=[], records=records)
    reward_fn = reward_function(SimpleNamespace(reward_kind="ranking"), model, word_tokenizer())
    return evaluate_reward(reward_fn, feedback, get_task("sentiment").gold_reward)[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Stage "reward": a reversed model at step 1, the planted one (offset 0.3) as final, each with the trainer's
    figures; stage "lengthy": the planted model (offset 0.5) on feedback where only the reward follows length."""
    sentiment, lengthy = sentiment_eval_records(), lengthy_eval_records()
    reversed_model, final, lengthy_model = planted_scorer(sign=-1.0), planted_scorer(offset=0.3), planted_scorer(offset=0.5)
    checkpoints = {
        "reward": [
            ("step-000001", 1, reversed_model, trainer_metrics(reversed_model, sentiment)),
            ("final", 2, final, trainer_metrics(final, sentiment)),
        ],
        "lengthy": [("final", 3, lengthy_model, trainer_metrics(lengthy_model, lengthy))],
    }
    return write_reward_run(tmp_path_factory.mktemp("rm") / "run", sentiment + lengthy, checkpoints)


def test_checkpoint_figures_are_the_hand_computed_ones_and_the_trainers(run):
    result = analyze_reward_checkpoints(run, stage="reward")
    df = result.df.set_index("tag")
    assert list(df.index) == ["step-000001", "final"] and list(df["step"]) == [1, 2]
    final, first = df.loc["final"], df.loc["step-000001"]
    # 12 held-out pairs: 10 labelled right, 2 (labeler b) wrong; the planted model orders every pair as the oracle does
    assert final["accuracy"] == pytest.approx(10 / 12) and first["accuracy"] == pytest.approx(2 / 12)
    assert final["accuracy_gold"] == 1.0 and first["accuracy_gold"] == 0.0
    assert final["labeler_agreement"] == pytest.approx(4 / 6) and final["label_accuracy_gold"] == pytest.approx(10 / 12)
    assert final["ece"] == pytest.approx(float(sigmoid(np.array(2 * R))) - 10 / 12, abs=1e-6)
    assert final["margin_mean"] == pytest.approx(2 * R * (10 - 2) / 12, abs=1e-5)
    assert abs(final["length_corr"]) < 1e-9  # good and bad completions are equally long on average
    assert final["spearman_gold"] > 0.8 and first["spearman_gold"] < -0.8
    assert (df["pairs"] == 12).all() and (df["texts"] == 12).all()
    for tag in df.index:  # every figure equals the trainer's evaluation of the in-memory model
        logged = run.checkpoint("reward", tag).meta["metrics"]
        for column in (
            "accuracy",
            "accuracy_gold",
            "labeler_agreement",
            "label_accuracy_gold",
            "spearman_gold",
            "ece",
            "length_corr",
            "margin_mean",
        ):
            assert df.loc[tag, column] == pytest.approx(logged[f"rm/{column}"], abs=1e-6), (tag, column)
    assert result.meta["max_abs_diff"] < 1e-6
    assert {v.check: v.level for v in result.verdicts} == {
        "figures reproduce the trainer's": "ok",
        "held-out accuracy against the labelers' agreement": "ok",  # above the ceiling of 4/6
    }


def test_figures_that_differ_from_the_logged_ones_and_a_model_far_below_the_ceiling_are_flagged(tmp_path):
    run = write_reward_run(
        tmp_path / "run", sentiment_eval_records(), {"reward": [("final", 1, planted_scorer(sign=-1.0), {"rm/accuracy": 0.9})]}
    )
    result = analyze_reward_checkpoints(run, stage="reward")
    assert result.meta["max_abs_diff"] == pytest.approx(0.9 - 2 / 12)
    verdicts = {v.check: v for v in result.verdicts}
    assert verdicts["figures reproduce the trainer's"].level == "flag"
    assert verdicts["held-out accuracy against the labelers' agreement"].level == "flag"
    assert verdicts["held-out accuracy against the labelers' agreement"].value == pytest.approx(4 / 6 - 2 / 12)


def test_the_reliability_diagram_has_the_two_planted_bins(run):
    result = analyze_reward_calibration(run, stage="reward")
    p = float(sigmoid(np.array(2 * R)))  # every prediction is sigmoid(+-2R), each pair also mirrored
    expected = pd.DataFrame(
        {"bin_low": [0.0, 0.9], "bin_high": [0.1, 1.0], "p_mean": [1 - p, p], "frequency": [2 / 12, 10 / 12], "count": [12, 12]}
    )
    pd.testing.assert_frame_equal(result.df, expected, atol=1e-6, check_dtype=False)
    assert result.meta["ece"] == pytest.approx(p - 10 / 12, abs=1e-6)
    assert result.verdicts[0].level == "flag"  # overconfident: P = 0.997 where the labels hold 0.83

    halves = analyze_reward_calibration(run, stage="reward", bins=2, ece_warn=0.2, ece_flag=0.3)  # the settings
    assert halves.df[["bin_low", "bin_high", "count"]].values.tolist() == [[0.0, 0.5, 12], [0.5, 1.0, 12]]
    assert halves.meta["n_bins"] == 2 and halves.meta["ece"] == pytest.approx(result.meta["ece"])  # the same two groups
    assert halves.verdicts[0].level == "ok" and halves.verdicts[0].threshold == "warn above 0.2, flag above 0.3"


def test_a_reward_that_follows_length_and_not_quality_is_flagged(run):
    result = analyze_reward_length(run, stage="lengthy")
    df = result.df
    assert sorted(df["completion"].unique()) == sorted([LONG_GOOD, LONG_BAD, SHORT_GOOD, SHORT_BAD])
    assert len(df) == 4 * len(PROMPTS) and set(df["length"]) == {3, 7}
    assert df["reward"].tolist() == pytest.approx([planted_reward(c) - 0.5 for c in df["completion"]], abs=1e-5)  # centred
    assert result.meta["length_corr"] == pytest.approx(1.0) and result.meta["gold_length_corr"] == pytest.approx(0.0, abs=1e-12)
    assert result.verdicts[0].level == "flag" and result.verdicts[0].value == pytest.approx(1.0)


def test_a_reward_that_follows_quality_passes_the_length_check(run):
    result = analyze_reward_length(run, stage="reward")
    assert abs(result.meta["length_corr"]) < 1e-9 and result.verdicts[0].level == "ok"
    assert result.df["gold"].notna().all() and result.df["length"].dtype.kind == "i"


def test_every_result_round_trips_through_the_cache_and_draws_itself(run):
    for name in MY_ANALYSES:
        analysis = get_analysis(name)
        stages = [s.name for s in run.stages("reward")] if analysis.needs.stage_kind else [None]
        for stage in stages:
            first, second = run_task(run, Task(analysis, stage)), run_task(run, Task(analysis, stage))
            assert (first.status, second.status) == ("computed", "cached"), (name, stage)
            pd.testing.assert_frame_equal(first.result.df, second.result.df, check_dtype=False)
            assert second.result.cache_meta() == to_jsonable(first.result.cache_meta(), where="meta", nonfinite="null")
            assert second.result.verdicts == first.result.verdicts and second.result.headlines() == first.result.headlines()
            html = str(second.result.to_html())
            assert "<table" in html and "style=" not in html, name
            assert second.result.plot() is not None


def test_a_setting_given_to_run_task_is_computed_with_and_cached_under_its_own_key(run):
    calibration = get_analysis("reward_model.calibration")
    assert dict(calibration.params) == {"bins": 10, "ece_warn": 0.05, "ece_flag": 0.15, "score_chunk": 128}
    default = run_task(run, Task(calibration, "reward"))
    first, again = run_task(run, Task(calibration, "reward", {"bins": 2})), run_task(run, Task(calibration, "reward", {"bins": 2}))
    assert (first.status, again.status) == ("computed", "cached")
    assert again.result.meta["n_bins"] == 2 and again.result.df["bin_high"].tolist() == [0.5, 1.0]
    assert default.result.df["bin_high"].tolist() == pytest.approx([0.1, 1.0])
    assert run_task(run, Task(calibration, "reward")).status == "cached"  # the default's entry is still there


def test_scoring_in_other_chunks_scores_again_and_gives_the_same_rewards(run, monkeypatch):
    calls, load = [], _heldout.load_reward_function

    def counting(folder, device="cpu"):
        reward_fn = load(folder, device)

        def score(prompts, completions):
            calls.append(len(prompts))
            return reward_fn(prompts, completions)

        return score

    monkeypatch.setattr(_heldout, "_rewards_cache", OrderedDict())
    monkeypatch.setattr(_heldout, "load_reward_function", counting)
    default = analyze_reward_length(run, stage="reward")
    assert calls == [12]  # 12 held-out texts, one chunk of at most 128
    chunked = analyze_reward_length(run, stage="reward", score_chunk=5)
    assert calls == [12, 5, 5, 2]  # not served the rewards scored in chunks of 128
    assert chunked.df["reward"].tolist() == pytest.approx(default.df["reward"].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="chunk must be a positive number of texts, got 0"):
        analyze_reward_length(run, stage="reward", score_chunk=0)


def test_the_length_thresholds_are_settings(run):
    strict = analyze_reward_length(run, stage="lengthy", length_warn=1.5, length_flag=2.0)
    assert strict.verdicts[0].level == "ok" and strict.verdicts[0].threshold.endswith("warn above 1.5, flag above 2")
    # accuracy 10/12 is 0.17 above the ceiling of 4/6; bounds below zero ask for more than that
    checkpoints = analyze_reward_checkpoints(run, stage="reward", gap_warn=-0.3, gap_flag=-0.2)
    assert {v.check: v.level for v in checkpoints.verdicts}["held-out accuracy against the labelers' agreement"] == "flag"


def test_a_generative_reward_model_is_read_with_the_critique_length_of_its_stage(tmp_path):
    """Its rewards are the verdict log-odds after a critique of the recorded length (3 tokens here, not the default 40)."""
    model = random_lm()
    meta = {"reward_kind": "generative", "reward_offset": 0.0, "critique_first": True, "critique_max_tokens": 3}
    run = write_reward_run(tmp_path / "gen", sentiment_eval_records(), {"reward": [("final", 1, model, {})]}, meta=meta)
    df = analyze_reward_length(run, stage="reward").df
    expected = judge_texts(model, word_tokenizer(), list(df["prompt"]), list(df["completion"]), critique_first=True, critique_max_tokens=3)
    assert df["reward"].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(math.isfinite(v) for v in df["reward"])
