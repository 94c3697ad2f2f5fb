"""Sentence grammar of the sentiment task: polar, negated, intensified, contrastive and neutral sentences.

The corpus (``corpus.py``) and the SFT completions (``prompts.py``) are both
built from these pieces, so a policy trained on SFT pairs writes the same
language the base model saw. The grammar returns plain strings; metadata
(negation, intensifier, trigger, length) is read back off the finished text,
so it is correct by construction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhf_lens.tasks.sentiment.vocab import (
    INTENSIFIERS,
    MILD_NEGATIVE,
    NEGATED_VERBS,
    NEGATIVE,
    NEGATIVE_VERBS,
    POSITIVE,
    POSITIVE_VERBS,
    Aspect,
    Domain,
)

POSITIVE_POLARITY = 1
NEGATIVE_POLARITY = -1
NEUTRAL = 0
CONTRAST = 2
"""Sentence plan codes: +1 / -1 polar, 0 neutral, 2 "X was good, but Y was bad" (both signs)."""

CLAUSE_KINDS: tuple[str, ...] = ("aspect", "verb", "noun", "recommend", "has")
"""Polar sentence shapes that can also follow "... and" (everything but "overall")."""
SENTENCE_KINDS: tuple[str, ...] = (*CLAUSE_KINDS, "overall")
_KIND_WEIGHTS = {"aspect": 4, "verb": 2, "noun": 2, "recommend": 1, "has": 2, "overall": 1}


@dataclass(frozen=True)
class GrammarRates:
    """How often the grammar uses each construction."""

    negation_rate: float = 0.25
    """Chance that a polar phrase is expressed through negation ("not good", "never boring")."""
    intensifier_rate: float = 0.3
    """Chance that a polar adjective or verb gets a booster ("very", "really", ...)."""
    neutral_rate: float = 0.25
    """Chance that a sentence not needed for the label is a neutral, factual one."""

    def __post_init__(self) -> None:
        for name in ("negation_rate", "intensifier_rate", "neutral_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def article(next_word: str) -> str:
    """ "a" or "an" before ``next_word`` ("an awful", "a useless")."""
    return "an" if next_word[0] in "aeiou" and not next_word.startswith("use") else "a"


def sentence_plan(rng: random.Random, label: str, n: int, neutral_rate: float) -> list[int]:
    """Polarity codes for ``n`` sentences of a text labelled ``label``; always consistent with it.

    positive/negative: every polar sentence has that sign, at least one is polar.
    mixed: both signs occur (one CONTRAST sentence when ``n == 1``).
    """
    if label == "mixed":
        if n == 1:
            return [CONTRAST]
        plan = [rng.choice((POSITIVE_POLARITY, NEGATIVE_POLARITY, NEUTRAL)) for _ in range(n)]
        if rng.random() < 0.3:
            plan[rng.randrange(n)] = CONTRAST
        else:
            i, j = rng.sample(range(n), 2)
            plan[i], plan[j] = POSITIVE_POLARITY, NEGATIVE_POLARITY
        return plan
    sign = POSITIVE_POLARITY if label == "positive" else NEGATIVE_POLARITY
    plan = [NEUTRAL if rng.random() < neutral_rate else sign for _ in range(n)]
    if sign not in plan:
        plan[rng.randrange(n)] = sign
    return plan


class Grammar:
    """Draws sentences for one domain at a time from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random, rates: GrammarRates) -> None:
        self.rng = rng
        self.rates = rates
        self._kinds = list(_KIND_WEIGHTS)
        self._weights = [_KIND_WEIGHTS[k] for k in self._kinds]

    # -- words and phrases -------------------------------------------------
    def adjective(self, aspect: Aspect | None, polarity: int) -> str:
        """A plain adjective of the given sign, aspect-specific ones included."""
        if polarity > 0:
            extra = aspect.positive if aspect else ()
            pool = POSITIVE if not extra or self.rng.random() < 0.6 else extra
        else:
            extra = aspect.negative if aspect else ()
            pool = NEGATIVE if not extra or self.rng.random() < 0.6 else extra
        return self.rng.choice(pool)

    def boosted(self, word: str) -> str:
        """``word``, preceded by an intensifier with probability ``intensifier_rate``."""
        if self.rng.random() < self.rates.intensifier_rate:
            return f"{self.rng.choice(INTENSIFIERS)} {word}"
        return word

    def adj_phrase(self, aspect: Aspect | None, polarity: int) -> str:
        """What follows "was": "very good", "good and clean", "not good", "never boring"."""
        rng = self.rng
        if rng.random() < self.rates.negation_rate:
            if polarity > 0:
                # VADER scales a negated word by -0.74, so "never boring" and "not bad" score positive.
                return "not bad" if rng.random() < 0.25 else f"never {rng.choice(MILD_NEGATIVE)}"
            return f"not {self.boosted(self.adjective(aspect, +1))}"
        first = self.boosted(self.adjective(aspect, polarity))
        if rng.random() < 0.15:
            second = self.adjective(aspect, polarity)
            if second != first.split()[-1]:
                return f"{first} and {second}"
        return first

    def noun_phrase(self, domain: Domain) -> str:
        """ "this movie" / "these headphones"."""
        return f"{'these' if domain.plural else 'this'} {self.rng.choice(domain.nouns)}"

    # -- clauses and sentences ---------------------------------------------
    def predicate(self, domain: Domain, aspect: Aspect, polarity: int) -> str:
        """ "was very good" for an aspect of ``domain``."""
        return f"{domain.be()} {self.adj_phrase(aspect, polarity)}"

    def noun_predicate(self, domain: Domain, aspect: Aspect, polarity: int) -> str:
        """What follows "This movie": "was great" or "has a clear screen"."""
        if self.rng.random() < 0.6:
            return f"{domain.be(domain.plural)} {self.adj_phrase(None, polarity)}"
        adj = self.boosted(self.adjective(aspect, polarity))
        return f"{domain.have(domain.plural)} {article(adj)} {adj} {aspect.name}"

    def clause(self, domain: Domain, aspect: Aspect, polarity: int, kind: str) -> str:
        """One polar clause without its final period, sentence-cased."""
        rng = self.rng
        if kind == "aspect":
            return f"The {aspect.name} {self.predicate(domain, aspect, polarity)}"
        if kind == "verb":
            if polarity < 0 and rng.random() < self.rates.negation_rate:
                return f"I did not {rng.choice(NEGATED_VERBS)} the {aspect.name}"
            verbs = POSITIVE_VERBS if polarity > 0 else NEGATIVE_VERBS
            verb = rng.choice(verbs)
            if rng.random() < self.rates.intensifier_rate:
                verb = f"really {verb}"
            return f"I {verb} the {aspect.name}"
        if kind == "noun":
            np_ = self.noun_phrase(domain)
            return f"{np_[0].upper()}{np_[1:]} {self.noun_predicate(domain, aspect, polarity)}"
        if kind == "recommend":
            if polarity > 0:
                adverb = "really " if rng.random() < self.rates.intensifier_rate else ""
                return f"I would {adverb}recommend {self.noun_phrase(domain)}"
            return f"I would {rng.choice(('not', 'never'))} recommend {self.noun_phrase(domain)}"
        if kind == "has":
            subject = "They" if domain.plural else "It"
            adj = self.boosted(self.adjective(aspect, polarity))
            return f"{subject} {domain.have(domain.plural)} {article(adj)} {adj} {aspect.name}"
        if kind == "overall":
            adj = self.boosted(self.adjective(None, polarity))
            noun = rng.choice(domain.nouns)
            return f"Overall, {adj} {noun}" if domain.plural else f"Overall, {article(adj)} {adj} {noun}"
        raise ValueError(f"unknown sentence kind {kind!r}; expected one of {SENTENCE_KINDS}")

    def polar_sentence(self, domain: Domain, aspect: Aspect, polarity: int, kinds: tuple[str, ...] = SENTENCE_KINDS) -> str:
        """A full polar sentence of a randomly chosen shape among ``kinds``."""
        weights = [_KIND_WEIGHTS[k] for k in kinds]
        kind = self.rng.choices(kinds, weights)[0]
        return self.clause(domain, aspect, polarity, kind) + "."

    def contrast_tail(self, domain: Domain, aspect: Aspect, polarity: int) -> str:
        """ ", but the service was rude." — appended to a clause of the opposite sign."""
        return f", but the {aspect.name} {self.predicate(domain, aspect, polarity)}."

    def contrast_sentence(self, domain: Domain, first: Aspect, second: Aspect) -> str:
        """ "The food was great, but the service was rude." (either order of signs)."""
        sign = self.rng.choice((POSITIVE_POLARITY, NEGATIVE_POLARITY))
        head = f"The {first.name} {self.predicate(domain, first, sign)}"
        return head + self.contrast_tail(domain, second, -sign)
