"""Word-level text helpers shared by the corpus generators and the simulated labelers.

One definition of "a word" and "contains the word" for the whole package, so a
text's ``trigger`` flag and a labeler's trigger bonus can never disagree.
"""

from __future__ import annotations

import functools
import re

_WORD_CHARS = r"A-Za-z0-9_'-"
_TRIGGER_WORD = re.compile(rf"[{_WORD_CHARS}]+")


def count_words(text: str) -> int:
    """Number of whitespace-separated words: the ``length`` of a text everywhere in rlhf-lens."""
    return len(text.split())


@functools.lru_cache(maxsize=256)
def word_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    """A case-insensitive regex matching any of ``words`` as a whole word."""
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![{_WORD_CHARS}])(?:{alternatives})(?![{_WORD_CHARS}])", re.IGNORECASE)


def contains_word(text: str, word: str) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole word, ignoring case ("Zorp," counts, "zorpy" does not)."""
    return word_pattern((word,)).search(text) is not None


def contains_any(text: str, words: tuple[str, ...]) -> bool:
    """Whether any of ``words`` occurs in ``text`` as a whole word, ignoring case."""
    return word_pattern(words).search(text) is not None


def check_trigger_word(field: str, word: str | None) -> None:
    """Raise ValueError naming ``field`` unless ``word`` is None or one plain word."""
    if word is None:
        return
    if not isinstance(word, str) or not _TRIGGER_WORD.fullmatch(word):
        raise ValueError(f"{field} must be one word of letters, digits, '_', '-' or \"'\" (or None), got {word!r}")
