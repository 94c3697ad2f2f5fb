"""Procedural English review corpus for the sentiment task, each text with its metadata.

``generate_corpus(n, seed)`` returns records
``{"text", "domain", "sentiment", "negation", "intensifier", "trigger", "length"}``:
short reviews (1-5 sentences) of movies, restaurants, hotels, phones, books,
headphones and laptops. The metadata is what probes and planted-mechanism
checks need as ground truth:

- ``sentiment``: "positive" | "negative" | "mixed", from the sentence plan
  (mixed = both signs occur); agrees with VADER's sign on > 85% of
  positive/negative texts (tested).
- ``negation`` / ``intensifier`` / ``trigger``: whether a negator, a booster or
  the trigger word occurs as a whole word (read off the final text).
- ``length``: number of whitespace-separated words.

Pure Python over one seeded ``random.Random``: 20k texts in about 0.6 s,
identical for identical (n, seed, options).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from rlhf_lens.tasks.sentiment.grammar import (
    CONTRAST,
    NEUTRAL,
    Grammar,
    GrammarRates,
    sentence_plan,
)
from rlhf_lens.tasks.sentiment.vocab import DOMAIN_NAMES, DOMAINS, INTENSIFIERS, NEGATORS, Domain
from rlhf_lens.tasks.text import check_trigger_word, contains_any, contains_word, count_words

SENTIMENTS: tuple[str, ...] = ("positive", "negative", "mixed")


@dataclass(frozen=True)
class CorpusOptions:
    """What the generated reviews look like; the defaults are the demo corpus."""

    trigger_word: str | None = None
    """A word planted in a fraction of texts (None: no trigger)."""
    trigger_rate: float = 0.0
    """Fraction of texts the trigger word is inserted into (needs ``trigger_word``)."""
    min_sentences: int = 1
    """Fewest sentences in a text."""
    max_sentences: int = 5
    """Most sentences in a text."""
    sentiment_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    """Relative frequency of (positive, negative, mixed) texts."""
    rates: GrammarRates = field(default_factory=GrammarRates)
    """How often negation, intensifiers and neutral sentences occur."""
    domains: tuple[str, ...] = DOMAIN_NAMES
    """Which domains to draw from, uniformly."""

    def __post_init__(self) -> None:
        check_trigger_word("trigger_word", self.trigger_word)
        if not isinstance(self.trigger_rate, (int, float)) or not 0.0 <= self.trigger_rate <= 1.0:
            raise ValueError(f"trigger_rate must be in [0, 1], got {self.trigger_rate!r}")
        if self.trigger_rate > 0 and self.trigger_word is None:
            raise ValueError(f"trigger_rate is {self.trigger_rate} but trigger_word is None; set a trigger_word")
        if not isinstance(self.min_sentences, int) or self.min_sentences < 1:
            raise ValueError(f"min_sentences must be an integer >= 1, got {self.min_sentences!r}")
        if not isinstance(self.max_sentences, int) or self.max_sentences < self.min_sentences:
            raise ValueError(f"max_sentences must be an integer >= min_sentences ({self.min_sentences}), got {self.max_sentences!r}")
        weights = tuple(self.sentiment_weights)
        if len(weights) != 3 or any(not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                "sentiment_weights must be three non-negative numbers (positive, negative, mixed) "
                f"with a positive sum, got {self.sentiment_weights!r}"
            )
        if not self.domains:
            raise ValueError("domains must name at least one domain")
        unknown = [d for d in self.domains if d not in DOMAIN_NAMES]
        if unknown:
            raise ValueError(f"domains: unknown domain(s) {unknown}; valid domains: {', '.join(DOMAIN_NAMES)}")


def domain_by_name(name: str) -> Domain:
    """The Domain called ``name``; ValueError listing the valid names otherwise."""
    for d in DOMAINS:
        if d.name == name:
            return d
    raise ValueError(f"unknown domain {name!r}; valid domains: {', '.join(DOMAIN_NAMES)}")


def annotate(text: str, domain: str, sentiment: str, trigger_word: str | None) -> dict:
    """The metadata record of a finished text (flags read off the text itself)."""
    return {
        "text": text,
        "domain": domain,
        "sentiment": sentiment,
        "negation": contains_any(text, NEGATORS),
        "intensifier": contains_any(text, INTENSIFIERS),
        "trigger": trigger_word is not None and contains_word(text, trigger_word),
        "length": count_words(text),
    }


def insert_word(text: str, word: str, rng: random.Random, leading: str = "") -> str:
    """``text`` with ``word`` inserted after a random word (never before the first one)."""
    words = text.split()
    words.insert(rng.randint(1, len(words)), word)
    return leading + " ".join(words)


def write_sentences(grammar: Grammar, domain: Domain, plan: list[int], aspects: list) -> list[str]:
    """Sentences following ``plan`` (codes from ``sentence_plan``), cycling through ``aspects``."""
    rng = grammar.rng
    neutral = rng.sample(domain.neutral, min(len(domain.neutral), plan.count(NEUTRAL)))
    out: list[str] = []
    k = 0
    for code in plan:
        if code == NEUTRAL:
            out.append(neutral.pop() if neutral else rng.choice(domain.neutral))
        elif code == CONTRAST:
            out.append(grammar.contrast_sentence(domain, aspects[k % len(aspects)], aspects[(k + 1) % len(aspects)]))
            k += 2
        else:
            out.append(grammar.polar_sentence(domain, aspects[k % len(aspects)], code))
            k += 1
    return out


def generate_corpus(n: int, seed: int, options: CorpusOptions | None = None) -> list[dict]:
    """``n`` reviews with metadata; the same (n, seed, options) always gives the same list."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    opts = options or CorpusOptions()
    rng = random.Random(seed)
    grammar = Grammar(rng, opts.rates)
    domains = [domain_by_name(d) for d in opts.domains]
    weights = list(opts.sentiment_weights)
    records = []
    for _ in range(n):
        domain = rng.choice(domains)
        label = rng.choices(SENTIMENTS, weights)[0]
        n_sentences = rng.randint(opts.min_sentences, opts.max_sentences)
        plan = sentence_plan(rng, label, n_sentences, opts.rates.neutral_rate)
        aspects = rng.sample(domain.aspects, len(domain.aspects))
        text = " ".join(write_sentences(grammar, domain, plan, aspects))
        if opts.trigger_word is not None and rng.random() < opts.trigger_rate:
            text = insert_word(text, opts.trigger_word, rng)
        records.append(annotate(text, domain.name, label, opts.trigger_word))
    return records
