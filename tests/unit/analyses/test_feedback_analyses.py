"""The feedback analyses against planted feedback: counts worked out by hand, labelers with known habits
(one always picks the longer answer, one the oracle's favourite, one the opposite), and mislabels a planted
reward model disputes."""

from __future__ import annotations

import pandas as pd
import pytest

from rlhf_lens.analyses.feedback import analyze_disputed_feedback, analyze_feedback_counts, analyze_labelers
from rlhf_lens.runs import Run, RunWriter
from rlhf_lens.tasks import gold_score
from tests.unit.analyses.reward_runs import (
    MISLABELLED,
    PROMPTS,
    R,
    bad,
    comparison,
    good,
    planted_scorer,
    sentiment_eval_records,
    write_reward_run,
)

# Four completions per prompt with four different lengths (1, 2, 6, 5 words) and four different oracle scores.
COMPLETIONS = (" great", " so awful", " the food was so very great", " food was awful and bad")


def feedback_only_run(tmp_path, records: list[dict]) -> Run:
    writer = RunWriter.create(tmp_path / "fb", name="fb", task="sentiment", seed=0, config={"task": {"name": "sentiment", "options": {}}})
    writer.add_stage("reward", "reward")
    writer.write_data("feedback", records)
    return Run.open(writer.path)


def judged_by(labeler: str, pick) -> list[dict]:
    """Every pair of COMPLETIONS of every prompt, judged by `labeler`: pick(a, b) -> the chosen one."""
    records = []
    for prompt in PROMPTS:
        for i, a in enumerate(COMPLETIONS):
            for b in COMPLETIONS[i + 1 :]:
                chosen = pick(a, b)
                records.append(comparison(prompt, chosen, b if chosen == a else a, labeler))
    return records


GOLD = dict(zip(COMPLETIONS, gold_score(list(COMPLETIONS))))
by_oracle = lambda a, b: a if GOLD[a] > GOLD[b] else b  # noqa: E731
against_oracle = lambda a, b: b if GOLD[a] > GOLD[b] else a  # noqa: E731
longer = lambda a, b: a if len(a.split()) > len(b.split()) else b  # noqa: E731


def test_the_planted_completions_have_no_ties_in_length_or_oracle_score():
    assert len(set(GOLD.values())) == 4 and len({len(c.split()) for c in COMPLETIONS}) == 4


def test_counts_by_stage_split_and_kind_with_the_pairs_each_kind_implies(tmp_path):
    ranking = {"kind": "ranking", "prompt": "p", "completions": [" a", " b", " c"], "order": [2, 0, 1], "labeler": "x"}
    ratings = [
        {"kind": "rating", "prompt": "q", "completion": c, "rating": r, "labeler": "x"} for c, r in ((" a", 5), (" b", 3), (" c", 3))
    ]
    critiques = [
        {"kind": "critique", "prompt": "q", "completion": c, "critique": "fine", "verdict": v, "labeler": "y"}
        for c, v in ((" a", "good"), (" b", "good"), (" c", "bad"), (" d", "bad"))
    ]
    records = (
        [comparison("p", " a", " b", "x", "train"), comparison("p", " a", " c", "y", "train"), comparison("r", " a", " b", "x")]
        + [{**ranking, "split": "train", "stage": "reward"}] * 2
        + [{**r, "split": "train", "stage": "gen"} for r in ratings]
        + [{**r, "split": "eval", "stage": "gen"} for r in critiques]
    )
    df = analyze_feedback_counts(feedback_only_run(tmp_path, records)).df
    expected = pd.DataFrame(
        [
            # stage order: the run's stages first (reward), then the rest; train before eval; DESIGN's kind order
            ("reward", "train", "comparison", 2, 2, 1, 2),
            ("reward", "train", "ranking", 2, 6, 1, 1),  # 3 pairs per ranking of 3
            ("reward", "eval", "comparison", 1, 1, 1, 1),
            ("gen", "train", "rating", 3, 2, 1, 1),  # 5 > 3 twice; the two 3s imply nothing
            ("gen", "eval", "critique", 4, 4, 1, 1),  # 2 good x 2 bad
        ],
        columns=["stage", "split", "kind", "records", "pairs", "prompts", "labelers"],
    )
    pd.testing.assert_frame_equal(df, expected)


def test_a_labeler_who_always_picks_the_longer_answer_is_found_and_flagged(tmp_path):
    records = judged_by("oracle", by_oracle) + judged_by("longer", longer) + judged_by("contrarian", against_oracle)
    result = analyze_labelers(feedback_only_run(tmp_path, records))
    df = result.df.set_index("labeler")
    assert df.loc["longer", "prefers_longer"] == 1.0
    assert df.loc["oracle", "gold_agreement"] == 1.0 and df.loc["contrarian", "gold_agreement"] == 0.0
    assert df.loc["oracle", "prefers_longer"] == pytest.approx(0.5)  # by construction 3 of each prompt's 6 pairs
    assert df.loc["oracle", "gold_prefers_longer"] == pytest.approx(0.5)
    assert (df["pairs"] == 6 * len(PROMPTS)).all() and (df["records"] == 6 * len(PROMPTS)).all()
    # on every pair the oracle-follower and the contrarian disagree and the length-follower sides with exactly one
    assert result.meta["labeler_agreement"] == pytest.approx(1 / 3)
    assert result.meta["labeler_agreement_by_stage"] == {"reward": pytest.approx(1 / 3)}
    assert df.loc["oracle", "agreement_with_others"] == pytest.approx(
        0.25
    )  # agrees with "longer" on half the pairs, never with "contrarian"
    levels = {v.check: v.level for v in result.verdicts}
    assert levels == {
        "agreement between labelers": "flag",
        "labelers' preference for longer answers": "flag",
        "labelers' agreement with the oracle": "flag",
    }
    longer_verdict = next(v for v in result.verdicts if "longer" in v.check)
    assert "longer" in longer_verdict.evidence and longer_verdict.value == 1.0
    assert "contrarian: 0%" in next(v for v in result.verdicts if "oracle" in v.check).evidence


def test_labelers_who_follow_the_oracle_pass_and_a_labeler_with_few_pairs_is_not_judged(tmp_path):
    few = [comparison(p, " the food was so very great", " great", "few") for p in PROMPTS]  # always the longer, 6 pairs
    run = feedback_only_run(tmp_path, judged_by("a", by_oracle) + judged_by("b", by_oracle) + few)
    result = analyze_labelers(run)
    df = result.df.set_index("labeler")
    assert df.loc["few", "prefers_longer"] == 1.0 and df.loc["few", "pairs"] == len(PROMPTS)
    assert result.meta["labeler_agreement"] == 1.0
    assert [v.level for v in result.verdicts] == ["ok", "ok", "ok"]
    assert result.headlines() == [("agreement between 3 labelers", "1")]

    # the settings: judged from 6 pairs on, "few" is flagged; with both bars for the longer answer at 100%, nobody is
    judged = analyze_labelers(run, min_pairs=len(PROMPTS))
    longer_verdict = next(v for v in judged.verdicts if "longer" in v.check)
    assert longer_verdict.level == "flag" and "few: 100%" in longer_verdict.evidence and judged.meta["min_pairs"] == len(PROMPTS)
    assert "at least 6 pairs" in longer_verdict.threshold
    lenient = analyze_labelers(run, min_pairs=len(PROMPTS), longer_warn=1.0, longer_flag=1.0)
    assert next(v for v in lenient.verdicts if "longer" in v.check).level == "ok"
    pd.testing.assert_frame_equal(lenient.df, judged.df)  # thresholds change verdicts, not the table


def test_disputed_feedback_lists_exactly_the_planted_mislabels(tmp_path):
    train = [comparison(p, bad(i), good(i), "a", "train") for i, p in enumerate(PROMPTS)]  # wrong, but not held out
    run = write_reward_run(tmp_path / "run", sentiment_eval_records() + train, {"reward": [("final", 4, planted_scorer(offset=0.3), {})]})
    result = analyze_disputed_feedback(run, stage="reward")
    df = result.df
    assert list(df["prompt"]) == [PROMPTS[i] for i in MISLABELLED] and set(df["labeler"]) == {"b"}
    assert list(df["chosen"]) == [bad(i) for i in MISLABELLED] and list(df["rejected"]) == [good(i) for i in MISLABELLED]
    assert df["margin"].tolist() == pytest.approx([2 * R] * 2, abs=1e-4)
    assert df["reward_rejected"].tolist() == pytest.approx([R - 0.3] * 2, abs=1e-4)  # centred as the policy sees it
    assert list(df["oracle_sides_with"]) == ["model", "model"]
    assert (df["gold_chosen"] < 0).all() and (df["gold_rejected"] > 0).all()
    assert result.meta == {
        "stage": "reward",
        "tag": "final",
        "top": 20,
        "heldout_pairs": 12,
        "disputed_pairs": 2,
        "oracle_sides_with_model": 2,
    }

    strongest = analyze_disputed_feedback(run, stage="reward", top=1)  # the setting: only the strongest dispute
    pd.testing.assert_frame_equal(strongest.df, df.head(1))
    assert strongest.meta["top"] == 1 and strongest.meta["disputed_pairs"] == 2
