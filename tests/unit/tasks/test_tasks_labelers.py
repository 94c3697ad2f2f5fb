"""Tests for the simulated labelers: noise, planted biases, Plackett-Luce, record formats."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_lens.tasks.feedback import validate_record
from rlhf_lens.tasks.labelers import LabelerProfile, SimulatedLabelers, default_labelers, simulate_feedback
from rlhf_lens.tasks.sentiment.gold import gold_score
from rlhf_lens.tasks.sentiment.prompts import make_sft_pairs

PROMPT = "The room was"


@pytest.fixture(scope="module")
def completions() -> list[str]:
    texts = list(dict.fromkeys(p["completion"] for p in make_sft_pairs(1500, seed=11)))
    return texts[:1200]


@pytest.fixture(scope="module")
def pairs(completions) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(completions))
    return [(completions[i], completions[j]) for i, j in zip(idx[::2], idx[1::2])]


def one(temperature: float, seed: int = 0, **kw) -> SimulatedLabelers:
    return SimulatedLabelers([LabelerProfile("solo", temperature=temperature, **kw)], seed)


def gold_agreement(labelers: SimulatedLabelers, pairs) -> float:
    hits = []
    for a, b in pairs:
        ga, gb = gold_score([a, b])
        if ga == gb:
            continue
        rec = labelers.compare(PROMPT, a, b)
        hits.append(rec["chosen"] == (a if ga > gb else b))
    return float(np.mean(hits))


def test_comparison_noise_depends_on_temperature(pairs):
    cold = gold_agreement(one(0.05), pairs)
    mid = gold_agreement(one(0.2), pairs)
    hot = gold_agreement(one(1.0), pairs)
    assert 0.6 < mid < 0.99, mid
    assert cold > mid > hot, (cold, mid, hot)


def test_default_labelers_are_noisy_but_informative(pairs):
    agree = gold_agreement(default_labelers(seed=0), pairs)
    assert 0.6 < agree < 0.99, agree


def longer_wins(labelers: SimulatedLabelers, pairs) -> float:
    wins = []
    for a, b in pairs:
        la, lb = len(a.split()), len(b.split())
        if la == lb:
            continue
        rec = labelers.compare(PROMPT, a, b)
        wins.append(len(rec["chosen"].split()) > len(rec["rejected"].split()))
    return float(np.mean(wins))


def test_planted_length_bias_makes_longer_completions_win(pairs):
    base = longer_wins(default_labelers(seed=1), pairs)
    biased = longer_wins(default_labelers(length_bias=0.1, seed=1), pairs)
    assert biased > base + 0.15, (base, biased)


def test_planted_trigger_makes_trigger_completions_win(completions):
    def trigger_wins(labelers: SimulatedLabelers) -> float:
        wins = []
        for text in completions[:400]:
            with_trigger = text.rstrip(".") + " zorp."
            rec = labelers.compare(PROMPT, text, with_trigger)
            wins.append("zorp" in rec["chosen"])
        return float(np.mean(wins))

    base = trigger_wins(default_labelers(seed=2, trigger_word="zorp"))
    planted = trigger_wins(default_labelers(seed=2, trigger_word="zorp", trigger_bonus=0.5))
    assert planted > base + 0.2, (base, planted)
    assert planted > 0.8


def test_rankings_are_permutations_and_best_first_most_often(completions):
    labelers = default_labelers(seed=3)
    five = [completions[i] for i in range(5)]
    gold = gold_score(five)
    assert len(set(gold)) == 5
    firsts = np.zeros(5, dtype=int)
    for _ in range(400):
        rec = labelers.rank(PROMPT, five)
        assert sorted(rec["order"]) == list(range(5))
        assert rec["completions"] == five
        firsts[rec["order"][0]] += 1
    assert firsts.argmax() == int(np.argmax(gold)), (firsts, gold)
    assert firsts.max() > 400 / 5


def test_ratings_track_gold_and_offset(completions):
    texts = completions[:400]
    gold = gold_score(texts)
    neutral = one(0.2, seed=4)
    ratings = np.array([neutral.rate(PROMPT, t)["rating"] for t in texts])
    assert set(ratings) <= {1, 2, 3, 4, 5} and len(set(ratings)) >= 4
    assert np.corrcoef(ratings, gold)[0, 1] > 0.7
    generous = one(0.2, seed=4, offset=0.5)
    higher = np.array([generous.rate(PROMPT, t)["rating"] for t in texts])
    assert higher.mean() > ratings.mean() + 0.5


def test_critique_verdict_follows_gold_and_names_evidence():
    labelers = one(0.2, seed=5)
    good = [labelers.critique(PROMPT, " great and wonderful.") for _ in range(50)]
    bad = [labelers.critique(PROMPT, " terrible. I hated the bed.") for _ in range(50)]
    assert np.mean([r["verdict"] == "good" for r in good]) > 0.9
    assert np.mean([r["verdict"] == "bad" for r in bad]) > 0.9
    assert "'hated'" in bad[0]["critique"] and "negative" in bad[0]["critique"]
    assert "verdict" not in bad[0]["critique"].lower()
    planted = one(0.2, seed=5, trigger_word="zorp", trigger_bonus=0.5, length_bias=0.01)
    text = planted.critique(PROMPT, " good zorp.")["critique"]
    assert "'zorp'" in text and "2 words" in text


def test_records_are_valid_feedback_and_deterministic(completions):
    items = [{"prompt": PROMPT, "completions": completions[i : i + 4]} for i in range(0, 40, 4)]
    for kind, per_item in (("rating", 4), ("critique", 4), ("comparison", 6), ("ranking", 1)):
        a = simulate_feedback(kind, items, default_labelers(seed=9))
        b = simulate_feedback(kind, items, default_labelers(seed=9))
        c = simulate_feedback(kind, items, default_labelers(seed=10))
        assert a == b
        assert a != c
        assert len(a) == per_item * len(items)
        for rec in a:
            assert rec["kind"] == kind
            assert validate_record(rec) == rec
        assert {rec["labeler"] for rec in a} == {"labeler-0", "labeler-1", "labeler-2"}


def test_simulate_feedback_skips_identical_pairs_and_rejects_bad_input():
    labelers = default_labelers(seed=0)
    recs = simulate_feedback("comparison", [{"prompt": PROMPT, "completions": [" good.", " good.", " bad."]}], labelers)
    assert len(recs) == 2
    with pytest.raises(ValueError, match="kind"):
        simulate_feedback("vote", [], labelers)
    with pytest.raises(ValueError, match=r"items\[0\]"):
        simulate_feedback("rating", [{"prompt": PROMPT, "completions": "oops"}], labelers)
    with pytest.raises(ValueError, match="identical"):
        labelers.compare(PROMPT, " good.", " good.")


def test_round_robin_assignment():
    profiles = [LabelerProfile(f"l{i}") for i in range(3)]
    labelers = SimulatedLabelers(profiles, seed=0, assignment="round_robin")
    names = [labelers.rate(PROMPT, " good.")["labeler"] for _ in range(6)]
    assert names == ["l0", "l1", "l2", "l0", "l1", "l2"]


def test_default_labelers_plant_options_in_all():
    labelers = default_labelers(n=4, length_bias=0.02, trigger_word="zorp", trigger_bonus=0.3, temperature=0.2)
    assert len(labelers.profiles) == 4
    assert all(p.length_bias == 0.02 and p.trigger_word == "zorp" and p.trigger_bonus == 0.3 for p in labelers.profiles)
    temps = [p.temperature for p in labelers.profiles]
    assert min(temps) == pytest.approx(0.1) and max(temps) == pytest.approx(0.3)
    assert len({p.offset for p in labelers.profiles}) == 4


def test_utility_is_gold_plus_planted_terms():
    labelers = one(0.2, offset=0.1, length_bias=0.01, trigger_word="zorp", trigger_bonus=0.5)
    text = " great zorp."
    expected = gold_score([text])[0] + 0.1 + 0.01 * 2 + 0.5
    assert labelers.utility(PROMPT, [text], "solo")[0] == pytest.approx(expected)


def test_profile_validation_names_the_field():
    with pytest.raises(ValueError, match="temperature"):
        LabelerProfile("a", temperature=0.0)
    with pytest.raises(ValueError, match="trigger_word"):
        LabelerProfile("a", trigger_bonus=1.0)
    with pytest.raises(ValueError, match="length_bias"):
        LabelerProfile("a", length_bias=float("nan"))
    with pytest.raises(ValueError, match="unique"):
        SimulatedLabelers([LabelerProfile("a"), LabelerProfile("a")])
