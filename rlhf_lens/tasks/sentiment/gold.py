"""Gold labeler of the sentiment task: VADER's compound score, the oracle reward.

The policy's goal is a *positive continuation* of a neutral review opening, so
the gold reward of a (prompt, completion) pair is the VADER compound score of
the completion alone, in [-1, 1]. The prompt is left out on purpose: prompts
are sentiment-neutral by construction (a unit test checks VADER scores them
0), and scoring only the completion keeps the reward a property of what the
policy wrote, not of the prompt it was handed.

VADER (Hutto & Gilbert, 2014) ships its lexicon inside the package, so the
oracle works offline; it handles negation ("not good" < 0, "never boring" > 0)
and boosters ("very good" > "good").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

POSITIVE_THRESHOLD = 0.05
"""VADER's own convention: compound >= 0.05 reads positive, <= -0.05 negative, else neutral."""

_NEGATION_WINDOW = 3  # VADER looks this many words back for a negator
_TOKEN = re.compile(r"[a-z']+")
_SENTENCE_END = re.compile(r"[.!?;]+")


@functools.lru_cache(maxsize=1)
def analyzer() -> SentimentIntensityAnalyzer:
    """The one shared VADER analyzer (loading the lexicon takes ~0.1 s, so it is made once)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def word_valence() -> dict[str, float]:
    """VADER's lexicon: lower-cased word -> mean human valence rating in [-4, 4] (the oracle's word-level truth)."""
    return dict(analyzer().lexicon)


def _check_texts(name: str, texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a list of strings, got a single string; wrap it in a list")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(t).__name__}")


def gold_score(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score of each text: float64 array of shape (len(texts),), values in [-1, 1]."""
    _check_texts("texts", texts)
    vader = analyzer()
    return np.array([vader.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


def gold_reward(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """Oracle reward of each (prompt, completion): VADER compound of the completion, shape (batch,).

    ``prompts`` is accepted (and length-checked) so every task's oracle has the
    same signature; the sentiment oracle ignores it (see the module docstring).
    """
    _check_texts("prompts", prompts)
    _check_texts("completions", completions)
    if len(prompts) != len(completions):
        raise ValueError(f"gold_reward needs one prompt per completion, got {len(prompts)} prompts and {len(completions)} completions")
    return gold_score(completions)


def sentiment_label(score: float) -> str:
    """ "positive" | "negative" | "neutral" for a compound score, by VADER's +-0.05 convention."""
    if score >= POSITIVE_THRESHOLD:
        return "positive"
    if score <= -POSITIVE_THRESHOLD:
        return "negative"
    return "neutral"


def evidence(text: str) -> list[tuple[str, float]]:
    """Sentiment-bearing phrases of ``text`` with their VADER valence, negation applied.

    [("not good", -1.41), ("loved", 2.9), ...] in text order; a negated word is
    quoted with its negator, and its valence scaled by VADER's -0.74.
    """
    from vaderSentiment.vaderSentiment import N_SCALAR, NEGATE

    lexicon = analyzer().lexicon
    found = []
    # Per sentence: VADER itself lets a negator reach across a full stop, but
    # "not good. I hated" quoted as one phrase would explain nothing.
    for sentence in _SENTENCE_END.split(text.lower()):
        tokens = _TOKEN.findall(sentence)
        for i, tok in enumerate(tokens):
            valence = lexicon.get(tok)
            if valence is None:
                continue
            start = i
            for j in range(max(0, i - _NEGATION_WINDOW), i):
                if tokens[j] in NEGATE:
                    start, valence = j, valence * N_SCALAR
                    break
            found.append((" ".join(tokens[start : i + 1]), float(valence)))
    return found


def explain(text: str) -> str:
    """One-sentence sentiment critique naming the evidence, e.g. "The review sounds negative: it says 'bad'."

    Holds no verdict; the labeler that writes the critique decides good/bad.
    """
    label = sentiment_label(float(gold_score([text])[0]))
    found = sorted(evidence(text), key=lambda pv: -abs(pv[1]))
    if label == "neutral":
        pos = next((p for p, v in found if v > 0), None)
        neg = next((p for p, v in found if v < 0), None)
        if pos and neg:
            return f"The review sounds mixed: it says '{pos}' but also '{neg}'."
        return "The review sounds neutral: it has no clear sentiment words."
    sign = 1.0 if label == "positive" else -1.0
    phrases: list[str] = []
    for phrase, valence in found:
        if valence * sign > 0 and phrase not in phrases:
            phrases.append(phrase)
    if not phrases:
        return f"The review sounds {label}."
    quoted = " and ".join(f"'{p}'" for p in phrases[:2])
    return f"The review sounds {label}: it says {quoted}."
