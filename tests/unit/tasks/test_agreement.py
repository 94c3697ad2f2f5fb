"""Reward-model evaluation and feedback audit against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_lens.tasks.agreement import (
    calibration,
    comparisons_from,
    disputed_records,
    gold_accuracy,
    labeler_agreement,
    labeler_profiles,
    pairwise_accuracy,
    rank_correlation,
)


def test_pairwise_and_gold_accuracy_by_hand():
    assert pairwise_accuracy(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0])) == pytest.approx((1 + 0.5 + 0) / 3)
    # Pair 2 is a gold tie and is left out; pair 1 is ordered against the oracle.
    acc = gold_accuracy(np.array([1.0, 0.0, 5.0]), np.array([0.0, 1.0, 5.0]), np.array([0.2, 0.3, 0.1]), np.array([0.1, 0.1, 0.1]))
    assert acc == pytest.approx(0.5)
    assert rank_correlation(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0])) == pytest.approx(1.0)


def test_calibration_of_a_perfectly_calibrated_and_an_overconfident_model():
    ece, bins = calibration(np.full(100, 0.5))
    assert ece == pytest.approx(0.0) and bins[0]["count"] == 200
    ece, _ = calibration(np.full(100, 0.99))  # says 99% but (symmetrised) the chosen side wins 100% of 0.99-bin
    assert ece == pytest.approx(0.01, abs=1e-9)


def records(*triples):
    return [{"prompt": "p", "chosen": c, "rejected": r, "labeler": who} for who, c, r in triples]


def test_labeler_agreement_and_profiles():
    pairs = records(("a", "good long answer", "bad"), ("b", "good long answer", "bad"), ("c", "bad", "good long answer"))
    # Pairs of labelers on the one pair: (a,b) agree, (a,c) and (b,c) disagree.
    assert labeler_agreement(pairs) == pytest.approx(1 / 3)
    gold = {("p", "good long answer"): 0.8, ("p", "bad"): -0.5}
    profiles = labeler_profiles(pairs, gold)
    assert profiles["a"]["gold_agreement"] == 1.0 and profiles["c"]["gold_agreement"] == 0.0
    assert profiles["a"]["prefers_longer"] == 1.0 and profiles["c"]["prefers_longer"] == 0.0


def test_disputed_records_are_the_strongest_disagreements_first():
    pairs = records(("a", "x", "y"), ("a", "y", "x"), ("b", "z", "w"))
    disputed = disputed_records(pairs, np.array([1.0, 0.0, -3.0]), np.array([0.0, 1.0, 0.0]))
    assert [d["chosen"] for d in disputed] == ["z", "y"]
    assert disputed[0]["model_margin_for_rejected"] == pytest.approx(3.0)


def test_comparisons_implied_by_rankings_ratings_and_verdicts():
    feedback = [
        {"kind": "ranking", "prompt": "p", "completions": ["a", "b", "c"], "order": [2, 0, 1], "labeler": "x"},
        {"kind": "rating", "prompt": "q", "completion": "good", "rating": 5, "labeler": "x"},
        {"kind": "rating", "prompt": "q", "completion": "bad", "rating": 2, "labeler": "x"},
        {"kind": "critique", "prompt": "r", "completion": "fine", "critique": "ok", "verdict": "good", "labeler": "y"},
        {"kind": "critique", "prompt": "r", "completion": "awful", "critique": "no", "verdict": "bad", "labeler": "y"},
    ]
    pairs = {(p["prompt"], p["chosen"], p["rejected"]) for p in comparisons_from(feedback)}
    assert pairs == {("p", "c", "a"), ("p", "c", "b"), ("p", "a", "b"), ("q", "good", "bad"), ("r", "fine", "awful")}


def test_critique_examples_fit_the_context_even_with_long_targets(tiny_tokenizer):
    from rlhf_lens.training.reward.objectives import critique_examples

    record = {"prompt": "The food", "completion": " was fine.", "critique": "it says fine. " * 40, "verdict": "good"}
    examples = critique_examples([record], tiny_tokenizer, context=32)
    for prefix, target in zip(examples.prompt_ids, examples.completion_ids):
        assert len(prefix) >= 1 and len(prefix) + len(target) <= 32
    assert tiny_tokenizer.decode(examples.completion_ids[1], skip_special_tokens=True) == " good"
