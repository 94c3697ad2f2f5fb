"""Tests for the procedural review corpus: determinism, metadata, VADER agreement, the work of generating it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rlhf_lens.tasks.sentiment import gold
from rlhf_lens.tasks.sentiment.corpus import CorpusOptions, generate_corpus
from rlhf_lens.tasks.sentiment.gold import analyzer, gold_score
from rlhf_lens.tasks.sentiment.grammar import GrammarRates
from rlhf_lens.tasks.sentiment.vocab import (
    DOMAINS,
    INTENSIFIERS,
    MILD_NEGATIVE,
    NEGATIVE,
    NEGATIVE_VERBS,
    POSITIVE,
    POSITIVE_VERBS,
)

KEYS = {"text", "domain", "sentiment", "negation", "intensifier", "trigger", "length"}


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return generate_corpus(3000, seed=7, options=CorpusOptions(trigger_word="zorp", trigger_rate=0.2))


def test_same_seed_same_corpus_and_different_seed_differs():
    a = generate_corpus(200, seed=1)
    b = generate_corpus(200, seed=1)
    c = generate_corpus(200, seed=2)
    assert a == b
    assert [r["text"] for r in a] != [r["text"] for r in c]
    assert sum(x["text"] == y["text"] for x, y in zip(a, c)) < 20


def test_at_least_five_domains_all_present(corpus):
    assert len(DOMAINS) >= 5
    assert {r["domain"] for r in corpus} == {d.name for d in DOMAINS}


def test_metadata_keys_and_types(corpus):
    for r in corpus:
        assert set(r) == KEYS
        assert r["sentiment"] in ("positive", "negative", "mixed")
        assert isinstance(r["negation"], bool) and isinstance(r["intensifier"], bool) and isinstance(r["trigger"], bool)
        assert r["length"] == len(r["text"].split())


def test_flags_match_text(corpus):
    for r in corpus:
        words = set(re.findall(r"[a-z']+", r["text"].lower()))
        assert r["negation"] == bool(words & {"not", "never"}), r
        assert r["intensifier"] == bool(words & set(INTENSIFIERS)), r
        assert r["trigger"] == ("zorp" in words), r


def test_every_construction_occurs(corpus):
    for key in ("negation", "intensifier", "trigger"):
        rate = np.mean([r[key] for r in corpus])
        assert 0.05 < rate < 0.95, (key, rate)
    assert abs(np.mean([r["trigger"] for r in corpus]) - 0.2) < 0.04
    counts = {s: sum(r["sentiment"] == s for r in corpus) for s in ("positive", "negative", "mixed")}
    assert min(counts.values()) > 300, counts


def test_lengths_vary(corpus):
    lengths = np.array([r["length"] for r in corpus])
    assert lengths.min() <= 5 and lengths.max() >= 30
    single = [r for r in corpus if r["text"].count(".") == 1 and r["sentiment"] != "mixed"]
    assert single, "some texts should be a single sentence"
    assert max(r["text"].count(".") for r in corpus) == 5


def test_no_trigger_without_trigger_word():
    texts = generate_corpus(300, seed=0)
    assert not any(r["trigger"] for r in texts)


def test_vocabulary_is_small(corpus):
    words = {w for r in corpus for w in re.findall(r"[a-z']+", r["text"].lower())}
    assert len(words) < 400, len(words)


def test_labels_agree_with_vader_sign(corpus):
    polar = [r for r in corpus if r["sentiment"] != "mixed"]
    scores = gold_score([r["text"] for r in polar])
    agree = np.mean([(s > 0) if r["sentiment"] == "positive" else (s < 0) for r, s in zip(polar, scores)])
    assert agree > 0.85, agree
    negated = [(r, s) for r, s in zip(polar, scores) if r["negation"]]
    assert len(negated) > 100
    agree_negated = np.mean([(s > 0) if r["sentiment"] == "positive" else (s < 0) for r, s in negated])
    assert agree_negated > 0.85, agree_negated


def test_negation_flips_vader():
    for adj in POSITIVE:
        plain, negated = gold_score([f"The food was {adj}.", f"The food was not {adj}."])
        assert plain > 0 > negated, adj
    for adj in MILD_NEGATIVE:
        plain, negated = gold_score([f"The plot was {adj}.", f"The plot was never {adj}."])
        assert plain < 0 < negated, adj


def test_intensifier_strengthens_vader():
    for booster in INTENSIFIERS:
        plain, boosted = gold_score(["The room was good.", f"The room was {booster} good."])
        assert boosted > plain, booster


def test_polar_words_have_the_right_vader_sign():
    lexicon = analyzer().lexicon
    positive = set(POSITIVE) | set(POSITIVE_VERBS) | {w for d in DOMAINS for a in d.aspects for w in a.positive}
    negative = set(NEGATIVE) | set(NEGATIVE_VERBS) | set(MILD_NEGATIVE) | {w for d in DOMAINS for a in d.aspects for w in a.negative}
    assert all(lexicon.get(w, 0) > 0 for w in positive), [w for w in positive if lexicon.get(w, 0) <= 0]
    assert all(lexicon.get(w, 0) < 0 for w in negative), [w for w in negative if lexicon.get(w, 0) >= 0]


def test_neutral_sentences_and_nouns_carry_no_sentiment():
    lexicon = analyzer().lexicon
    for d in DOMAINS:
        texts = [*d.neutral, *d.nouns, *(a.name for a in d.aspects), *d.activities, *d.times]
        hits = [w for t in texts for w in re.findall(r"[a-z']+", t.lower()) if w in lexicon]
        assert not hits, (d.name, hits)


def test_generation_is_one_pass_of_grammar_without_the_oracle(monkeypatch):
    # Its time (budget 5 s for 20,000 texts on 2 cores) is benchmarks/budgets.py --only corpus. Its work: 20,000 records
    # drawn one after another from one seeded generator (the first 200 are the 200-record corpus: no pass over the
    # whole corpus redraws any), and no VADER call on the way (the oracle scores texts later, when asked).
    def no_oracle():
        raise AssertionError("generating the corpus called the VADER oracle")

    monkeypatch.setattr(gold, "analyzer", no_oracle)
    texts = generate_corpus(20_000, seed=3)
    assert len(texts) == 20_000 and all(set(r) == KEYS for r in texts)
    assert texts[:200] == generate_corpus(200, seed=3)


def test_options_are_validated_by_field_name():
    with pytest.raises(ValueError, match="trigger_word"):
        CorpusOptions(trigger_rate=0.1)
    with pytest.raises(ValueError, match="trigger_rate"):
        CorpusOptions(trigger_word="zorp", trigger_rate=1.5)
    with pytest.raises(ValueError, match="trigger_word"):
        CorpusOptions(trigger_word="two words")
    with pytest.raises(ValueError, match="max_sentences"):
        CorpusOptions(min_sentences=3, max_sentences=2)
    with pytest.raises(ValueError, match="domains"):
        CorpusOptions(domains=("movie", "spaceship"))
    with pytest.raises(ValueError, match="negation_rate"):
        GrammarRates(negation_rate=2.0)


def test_domain_and_sentiment_options_are_respected():
    texts = generate_corpus(300, seed=0, options=CorpusOptions(domains=("hotel",), sentiment_weights=(1, 0, 0)))
    assert {r["domain"] for r in texts} == {"hotel"}
    assert {r["sentiment"] for r in texts} == {"positive"}
    assert np.mean(gold_score([r["text"] for r in texts]) > 0) > 0.95
