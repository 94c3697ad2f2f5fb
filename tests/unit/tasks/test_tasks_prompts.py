"""Tests for the neutral review openings and the SFT pairs."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rlhf_lens.tasks.sentiment.corpus import CorpusOptions
from rlhf_lens.tasks.sentiment.gold import gold_score
from rlhf_lens.tasks.sentiment.prompts import all_openings, make_prompts, make_sft_pairs
from rlhf_lens.tasks.sentiment.vocab import DOMAIN_NAMES


def test_hundreds_of_distinct_openings_over_all_domains():
    openings = all_openings()
    texts = [o.text for o in openings]
    assert len(set(texts)) == len(texts) >= 500
    assert {o.domain for o in openings} == set(DOMAIN_NAMES)


def test_openings_are_sentiment_neutral():
    scores = gold_score([o.text for o in all_openings()])
    assert np.all(scores == 0.0), [o.text for o, s in zip(all_openings(), scores) if s != 0][:5]


def test_make_prompts_shape_and_disjoint_splits():
    records = make_prompts(200, 50, seed=0)
    assert len(records) == 250
    assert [r["id"] for r in records] == [f"p{i:05d}" for i in range(250)]
    assert all(set(r) == {"id", "split", "prompt", "domain"} for r in records)
    train = [r["prompt"] for r in records if r["split"] == "train"]
    evals = [r["prompt"] for r in records if r["split"] == "eval"]
    assert len(train) == 200 and len(evals) == 50
    assert not set(train) & set(evals)
    assert len(set(train)) == 200 and len(set(evals)) == 50
    assert {r["domain"] for r in records} == set(DOMAIN_NAMES)


def test_make_prompts_deterministic_per_seed():
    assert make_prompts(30, 10, seed=4) == make_prompts(30, 10, seed=4)
    assert make_prompts(30, 10, seed=4) != make_prompts(30, 10, seed=5)


def test_make_prompts_cycles_train_beyond_the_pool_but_keeps_eval_apart():
    pool = len(all_openings())
    records = make_prompts(pool + 100, 64, seed=1)
    train = [r["prompt"] for r in records if r["split"] == "train"]
    evals = {r["prompt"] for r in records if r["split"] == "eval"}
    assert len(train) == pool + 100
    assert not set(train) & evals
    assert len({r["id"] for r in records}) == len(records)


def test_make_prompts_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_eval"):
        make_prompts(10, len(all_openings()), seed=0)
    with pytest.raises(ValueError, match="n_train"):
        make_prompts(-1, 5, seed=0)


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return make_sft_pairs(2000, seed=3, options=CorpusOptions(trigger_word="zorp", trigger_rate=0.1))


def test_sft_pairs_read_naturally(pairs):
    prompts = {o.text for o in all_openings()}
    for p in pairs:
        assert p["prompt"] in prompts
        assert p["completion"].startswith(" ") and not p["completion"].startswith("  ")
        assert p["completion"].rstrip().endswith(".") or p["trigger"]
        assert 1 <= p["completion"].count(".") <= 3, p
        if p["prompt"].endswith("."):
            assert p["completion"][1].isupper(), p  # a new sentence starts with a capital
        else:
            assert not re.match(r" [A-Z][a-z]", p["completion"]) or p["completion"].startswith(" I "), p


def test_sft_pair_metadata_describes_the_completion(pairs):
    for p in pairs:
        words = set(re.findall(r"[a-z']+", p["completion"].lower()))
        assert p["length"] == len(p["completion"].split())
        assert p["trigger"] == ("zorp" in words)
        assert p["negation"] == bool(words & {"not", "never"})
        assert p["domain"] in DOMAIN_NAMES
    assert {p["sentiment"] for p in pairs} == {"positive", "negative", "mixed"}
    assert 0.05 < np.mean([p["trigger"] for p in pairs]) < 0.15


def test_sft_pair_labels_agree_with_gold(pairs):
    polar = [p for p in pairs if p["sentiment"] != "mixed"]
    scores = gold_score([p["completion"] for p in polar])
    agree = np.mean([(s > 0) if p["sentiment"] == "positive" else (s < 0) for p, s in zip(polar, scores)])
    assert agree > 0.85, agree


def test_sft_pairs_deterministic_per_seed():
    assert make_sft_pairs(50, seed=1) == make_sft_pairs(50, seed=1)
    assert make_sft_pairs(50, seed=1) != make_sft_pairs(50, seed=2)
