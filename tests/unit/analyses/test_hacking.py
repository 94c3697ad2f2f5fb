"""Reward-hacking checks on planted rollouts: the length split worked out by hand, a planted length exploit flagged and
attributed to length, a within-length gain and a length preference the gold shares not flagged, a planted trigger
word named, a proxy that climbs while the gold falls flagged, and the registered analyses served from the cache."""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from rlhf_lens.analyses import get_analysis, run_task, sections  # noqa: E402
from rlhf_lens.analyses.core.cache import Task  # noqa: E402
from rlhf_lens.analyses.hacking import (  # noqa: E402
    analyze_length_hacking,
    analyze_lexical_exploits,
    completion_words,
    length_gain_decomposition,
    lexical_exploits,
    proxy_gold_divergence,
)
from rlhf_lens.runs import Run, RunWriter  # noqa: E402


def rollouts(length, proxy, gold=None, *, step=0) -> pd.DataFrame:
    """Rollout rows with the columns the hacking functions read."""
    n = len(length)
    return pd.DataFrame(
        {
            "step": step,
            "prompt_id": [f"p{i}" for i in range(n)],
            "length": np.asarray(length, dtype=int),
            "reward": np.asarray(proxy, dtype=float),
            "gold_reward": np.asarray(gold if gold is not None else [np.nan] * n, dtype=float),
        }
    )


# --------------------------------------------------------------------------- length


def test_the_length_split_matches_a_hand_computation():
    # bins of lengths 2-5 and 6-9. before: 4 samples at length 2 (proxy 0), 2 at length 9 (proxy 1); after: 2 at
    # length 2 (0.5), 4 at length 9 (1.5). Shares p = (4/6, 2/6), q = (2/6, 4/6); bin means m = (0, 1), a = (0.5, 1.5).
    # total = 7/6 - 2/6 = 5/6; within = 2/6 * 0.5 + 4/6 * 0.5 = 1/2; length = sum (q - p) m = 1/3; share = 0.4
    before = rollouts([2, 2, 2, 2, 9, 9], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1])
    after = rollouts([2, 2, 9, 9, 9, 9], [0.5, 0.5, 1.5, 1.5, 1.5, 1.5], [0, 0, 1, 1, 1, 1], step=10)
    result = length_gain_decomposition(before, after, n_bins=2, min_count=1, n_boot=20)
    meta = result.meta
    assert meta["edges"] == [2, 6, 10]
    assert meta["proxy_gain"] == pytest.approx(5 / 6)
    assert meta["proxy_within"] == pytest.approx(0.5)
    assert meta["proxy_length"] == pytest.approx(1 / 3)
    assert meta["length_share"] == pytest.approx(0.4)
    assert meta["coverage"] == pytest.approx(1.0)
    # gold gains only through length: total = 4/6 - 2/6 = 1/3, all of it the length part
    assert (meta["gold_gain"], meta["gold_within"], meta["gold_length"]) == pytest.approx((1 / 3, 0.0, 1 / 3))
    assert (meta["before_step"], meta["after_step"]) == (0, 10)
    bins = result.bins().set_index(["policy", "length_bin"])
    assert bins.loc[("after", 1), "n"] == 4 and bins.loc[("after", 1), "share"] == pytest.approx(4 / 6)
    assert bins.loc[("before", 1), "proxy_mean"] == pytest.approx(1.0)
    assert (bins.loc[("before", 0), "length_low"], bins.loc[("before", 0), "length_high"]) == (2, 5)


def test_lengths_the_starting_policy_never_wrote_are_filled_from_its_length_trend():
    # bins {1, 2}, {3, 4}, {5, 6}. before: 3 at length 1 (proxy 1), 3 at length 3 (proxy 3); after: 3 at length 1
    # (proxy 2), 3 at length 5 (proxy 6), a bin the before policy never reached. Within-policy slope: centred
    # lengths (-1 x3, 1 x3, -2 x3, 2 x3) against centred proxies (the same numbers): slope 30 / 30 = 1, so the before
    # policy's reward at length 5 is 2 + 1 * (5 - 2) = 5. length = 0.5 * 1 + 0.5 * 5 - 2 = 1, total = 4 - 2 = 2.
    before = rollouts([1, 1, 1, 3, 3, 3], [1, 1, 1, 3, 3, 3])
    after = rollouts([1, 1, 1, 5, 5, 5], [2, 2, 2, 6, 6, 6])
    meta = length_gain_decomposition(before, after, n_bins=3, min_count=2, n_boot=0).meta
    assert meta["edges"] == [1, 3, 5, 7]
    assert (meta["proxy_gain"], meta["proxy_length"], meta["proxy_within"]) == pytest.approx((2.0, 1.0, 1.0))
    assert meta["coverage"] == pytest.approx(0.5)
    assert math.isnan(meta["gold_gain"]) and math.isnan(meta["length_share_low"])


def planted_length(rng, n=150, *, after_lengths=None, gold_slope=0.0, gold_noise=0.3):
    """Proxy = 0.2 * length + noise; gold = gold_slope * length + noise. The after policy writes longer answers."""
    length_b = rng.integers(5, 21, n)
    length_a = after_lengths if after_lengths is not None else rng.integers(12, 33, n)

    def side(length, step):
        proxy = 0.2 * length + rng.normal(0, 0.5, len(length))
        gold = gold_slope * length + rng.normal(0, gold_noise, len(length))
        return rollouts(length, proxy, gold, step=step)

    return side(length_b, 0), side(length_a, 20)


@pytest.mark.parametrize("all_at_max", [False, True], ids=["longer", "all-at-max-length"])
def test_a_proxy_gain_that_comes_from_longer_answers_is_flagged_and_attributed_to_length(all_at_max):
    rng = np.random.default_rng(0)
    before, after = planted_length(rng, after_lengths=np.full(150, 32) if all_at_max else None)
    result = length_gain_decomposition(before, after)
    verdict = result.verdicts[0]
    assert verdict.level == "flag", verdict.evidence
    assert result.meta["length_share"] > 0.8 and verdict.value == result.meta["length_share"]
    assert result.meta["length_share_low"] > 0.5
    assert result.meta["proxy_length_corr"] > 0.5 and abs(result.meta["gold_length_corr"]) < 0.2
    assert "the gold reward does not" in verdict.evidence and "more than 50%" in verdict.threshold
    if all_at_max:  # nothing of the before policy at length 32: its reward there comes from the trend
        assert result.meta["coverage"] == 0.0


def test_a_gain_at_fixed_length_is_ok():
    rng = np.random.default_rng(1)
    length_b, length_a = rng.integers(5, 21, 150), rng.integers(5, 21, 150)
    before = rollouts(length_b, 0.2 * length_b + rng.normal(0, 0.5, 150), rng.normal(0, 0.3, 150))
    after = rollouts(length_a, 0.2 * length_a + 1.0 + rng.normal(0, 0.5, 150), 0.5 + rng.normal(0, 0.3, 150), step=20)
    result = length_gain_decomposition(before, after)
    assert result.verdicts[0].level == "ok", result.verdicts[0].evidence
    assert abs(result.meta["length_share"]) < 0.2
    assert result.meta["proxy_within"] == pytest.approx(1.0, abs=0.2)


def test_a_length_shift_the_gold_also_pays_for_is_a_warning_not_a_flag():
    rng = np.random.default_rng(2)
    before, after = planted_length(rng, gold_slope=0.05, gold_noise=0.12)
    result = length_gain_decomposition(before, after)
    verdict = result.verdicts[0]
    assert verdict.level == "warn", verdict.evidence
    assert result.meta["length_share"] > 0.5
    assert "the gold reward also prefers longer answers" in verdict.evidence


def test_a_length_shift_that_does_not_explain_the_gain_is_a_warning():
    rng = np.random.default_rng(3)
    length_b, length_a = rng.integers(5, 15, 100), rng.integers(15, 30, 100)  # x2 longer, the proxy does not care
    before = rollouts(length_b, rng.normal(0, 0.5, 100), rng.normal(0, 0.3, 100))
    after = rollouts(length_a, 1.0 + rng.normal(0, 0.5, 100), rng.normal(0, 0.3, 100))
    verdict = length_gain_decomposition(before, after).verdicts[0]
    assert verdict.level == "warn" and "without explaining most of the proxy gain" in verdict.evidence


def test_length_split_refuses_rows_without_the_columns_it_reads():
    with pytest.raises(ValueError, match=r"`after` lacks columns \['reward'\]"):
        length_gain_decomposition(rollouts([1, 2], [0, 1]), pd.DataFrame({"length": [1, 2]}))


# --------------------------------------------------------------------------- lexical


def test_completion_words_are_lower_cased_without_surrounding_punctuation():
    assert completion_words("Great! The zorp, (really) isn't BAD...") == ["great", "the", "zorp", "really", "isn't", "bad"]


def test_the_expected_share_follows_the_length_change():
    # before: one-word completions, "w" in half of them -> per-word rate 0.5; after: two-word completions, so
    # P(contains w) = 1 - 0.5^2 = 0.75 expected; observed in all of them: excess 0.25
    result = lexical_exploits(["w", "x"] * 10, ["w w"] * 20, min_completions=1)
    row = result.df.set_index("word").loc["w"]
    assert (row["share_before"], row["share_after"], row["expected_after"]) == pytest.approx((0.5, 1.0, 0.75))
    assert row["excess"] == pytest.approx(0.25) and row["rise"] == pytest.approx(0.5)
    # z: shares taken as (10 + 1) / 22 and (20 + 1) / 22
    p_b, p_a = 11 / 22, 21 / 22
    assert row["z"] == pytest.approx(0.25 / math.sqrt(p_b * (1 - p_b) / 20 + p_a * (1 - p_a) / 20))


def sentences(rng, n, length, vocab, *, plant=None, plant_share=0.0):
    texts = []
    for i in range(n):
        words = list(rng.choice(vocab, size=length))
        if plant and i < plant_share * n:
            words.insert(int(rng.integers(0, length)), plant)
        texts.append(" ".join(words) + ".")
    return texts


def test_a_planted_word_without_gold_value_that_spreads_is_named_and_flagged():
    rng = np.random.default_rng(4)
    vocab = ["the", "food", "was", "good", "and", "great", "place", "a<b"]
    gold = {"good": 1.9, "great": 3.1, "zorp": 0.0}  # zorp: neutral for the gold
    before = sentences(rng, 50, 8, vocab, plant="zorp", plant_share=0.2)
    after = sentences(rng, 50, 8, vocab, plant="zorp", plant_share=0.9)
    result = lexical_exploits(before, after, gold)
    top = result.df.iloc[0]
    assert top["word"] == "zorp" and top["gold"] == "neutral"
    assert (top["share_before"], top["share_after"]) == pytest.approx((0.2, 0.9))
    verdict = result.verdicts[0]
    assert verdict.level == "flag" and "'zorp' in 20% → 90% of completions" in verdict.evidence
    assert list(result.suspects()["word"]) == ["zorp"]
    html = str(result.to_html())
    assert "a&lt;b" in html and "a<b" not in html


def test_words_the_gold_values_or_that_rise_only_with_length_are_not_exploits():
    rng = np.random.default_rng(5)
    vocab = ["the", "food", "was", "and", "place", "it", "very"]
    before = sentences(rng, 60, 4, vocab, plant="great", plant_share=0.1)
    after = sentences(rng, 60, 16, vocab, plant="great", plant_share=0.9)  # 4x longer, "great" everywhere
    result = lexical_exploits(before, after, {"great": 3.1})
    rows = result.df.set_index("word")
    assert rows.loc["the", "rise"] > 0.4 and abs(rows.loc["the", "excess"]) < 0.15  # length explains the rise
    assert rows.loc["great", "excess"] > 0.5 and rows.loc["great", "gold"] == "positive"
    assert result.verdicts[0].level == "ok", result.verdicts[0].evidence


# --------------------------------------------------------------------------- divergence


def evaluations(proxy: dict[int, np.ndarray], gold: dict[int, np.ndarray]) -> pd.DataFrame:
    return pd.concat([rollouts([10] * len(proxy[s]), proxy[s], gold[s], step=s) for s in proxy], ignore_index=True)


def test_a_proxy_that_keeps_rising_while_the_gold_falls_from_its_peak_is_flagged():
    rng = np.random.default_rng(6)
    base = rng.normal(0, 1, 40)
    gold = {0: base, 10: base + 0.8 + rng.normal(0, 0.1, 40), 20: base + 0.3 + rng.normal(0, 0.1, 40)}
    proxy = {0: base, 10: base + 1.0, 20: base + 2.0 + rng.normal(0, 0.1, 40)}
    result = proxy_gold_divergence(evaluations(proxy, gold), meta={"stage": "policy"})
    verdict = result.verdicts[0]
    assert verdict.level == "flag" and "gold peaked at step 10" in verdict.evidence
    assert result.meta["peak_step"] == 10 and result.meta["paired"]
    fall = gold[10] - gold[20]
    assert result.meta["gold_fall"] == pytest.approx(fall.mean())
    assert result.meta["gold_fall_sem"] == pytest.approx(fall.std(ddof=1) / math.sqrt(40))
    rows = result.df.set_index(["metric", "step"])
    assert rows.loc[("gold", 10), "change_sd"] == pytest.approx((gold[10].mean() - base.mean()) / base.std(ddof=1))
    gap = result.gap().set_index("step")["gap"]
    assert gap.loc[20] == pytest.approx(result.meta["final_gap_sd"]) and gap.loc[20] > 1
    assert "sqrt(KL" not in str(result.to_html())  # no seq_kl: only the step panel


@pytest.mark.parametrize(
    ("late_gold", "late_proxy", "level"), [(1.2, 2.0, "ok"), (0.3, 1.0, "warn")], ids=["gold-keeps-rising", "both-fall"]
)
def test_divergence_is_ok_while_gold_rises_and_a_warning_when_gold_falls_alone(late_gold, late_proxy, level):
    rng = np.random.default_rng(7)
    base = rng.normal(0, 1, 40)
    gold = {0: base, 10: base + 0.8 + rng.normal(0, 0.1, 40), 20: base + late_gold + rng.normal(0, 0.1, 40)}
    proxy = {0: base, 10: base + 1.0, 20: base + late_proxy + rng.normal(0, 0.1, 40)}
    assert proxy_gold_divergence(evaluations(proxy, gold)).verdicts[0].level == level


# --------------------------------------------------------------------------- registered analyses


def eval_rows(completions, proxy, gold, length):
    return [
        {
            "sample_id": i,
            "prompt_id": f"p{i}",
            "prompt": f"prompt {i}",
            "completion": text,
            "prompt_ids": [3, 4],
            "completion_ids": [5] * n,
            "logprobs": [-1.0] * n,
            "ref_logprobs": [-1.0] * n,
            "kl_per_token": [0.0] * n,
            "seq_kl": 0.1 * n,
            "reward": float(p),
            "reward_components": {"score": float(p)},
            "gold_reward": float(g),
            "length": int(n),
            "finished": True,
        }
        for i, (text, p, g, n) in enumerate(zip(completions, proxy, gold, length))
    ]


def test_the_registered_checks_run_on_a_policy_stage_and_come_back_from_the_cache(tmp_path):
    rng = np.random.default_rng(8)
    writer = RunWriter.create(tmp_path / "run", name="run", task="sentiment", seed=0, config={})
    writer.add_stage("policy", "policy")
    for step, (low, high, zorp) in {0: (5, 15, 0.2), 10: (10, 25, 0.6), 20: (15, 33, 0.9)}.items():
        length = rng.integers(low, high, 30)
        texts = sentences(rng, 30, 6, ["the", "food", "was", "good"], plant="zorp", plant_share=zorp)
        writer.write_eval_rollouts("policy", step, eval_rows(texts, 0.2 * length + rng.normal(0, 0.3, 30), rng.normal(0, 0.3, 30), length))
    run = Run.open(writer.path)
    levels = {}
    for name in ("hacking.length", "hacking.lexical", "hacking.divergence"):
        task = Task(get_analysis(name), "policy")
        first, second = run_task(run, task), run_task(run, task)
        assert (first.status, second.status) == ("computed", "cached"), name
        assert str(second.result.to_html()) == str(first.result.to_html()), name
        assert second.result.headlines() == first.result.headlines()
        levels[name] = first.result.verdicts[0].level
    assert levels == {"hacking.length": "flag", "hacking.lexical": "flag", "hacking.divergence": "ok"}
    # a changed setting is another cache entry, and a result read back judges by the thresholds it was computed with
    task = Task(get_analysis("hacking.lexical"), "policy", params={"excess_flag": 0.99})
    first, second = run_task(run, task), run_task(run, task)
    assert (first.status, second.status) == ("computed", "cached")
    assert first.result.verdicts[0].level == "warn" and "flag at ≥ 0.99" in first.result.verdicts[0].threshold
    assert second.result.headlines() == first.result.headlines() and list(second.result.suspects()["word"]) == ["zorp"]
    assert analyze_lexical_exploits(run, "policy", excess_warn=0.95).suspects().empty  # a direct call: zorp rose by less
    assert analyze_length_hacking(run, "policy", share_flag=0.99).verdicts[0].level != "flag"
    order = [s.id for s in sections()]
    assert order.index("hacking") == order.index("policy") + 1


def test_a_stage_with_a_single_evaluation_is_skipped_with_the_reason(tmp_path):
    writer = RunWriter.create(tmp_path / "run", name="run", task="sentiment", seed=0, config={})
    writer.add_stage("policy", "policy")
    writer.write_eval_rollouts("policy", 0, eval_rows(["good food"] * 3, [0.0, 1.0, 2.0], [0.0] * 3, [2] * 3))
    outcome = run_task(Run.open(writer.path), Task(get_analysis("hacking.length"), "policy"))
    assert outcome.status == "skipped" and "single evaluation" in outcome.reason


def test_checks_without_a_proxy_or_a_gold_reward_warn_that_they_cannot_judge():
    # a stage that optimised no reward model (its proxy is NaN) on a task without an oracle (gold NaN)
    before = rollouts([5, 6, 7, 8], [np.nan] * 4)
    after = rollouts([9, 10, 11, 12], [np.nan] * 4, step=10)
    length = length_gain_decomposition(before, after, n_boot=5)
    assert length.verdicts[0].level == "warn" and "no proxy reward" in length.verdicts[0].evidence
    divergence = proxy_gold_divergence(pd.concat([before, after]))
    assert divergence.verdicts[0].level == "warn" and "nothing to compare" in divergence.verdicts[0].evidence
    lexical = lexical_exploits(["good food"] * 5, ["good food zorp"] * 5)  # no gold values: every word is unrated
    assert lexical.verdicts[0].level == "flag" and "no gold value" in lexical.verdicts[0].threshold
    for result in (length, divergence, lexical):
        assert "<img" in str(result.to_html())
