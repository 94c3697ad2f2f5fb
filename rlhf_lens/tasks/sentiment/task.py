"""The built-in ``sentiment`` task: options with planted mechanisms, and the task object the trainer uses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from rlhf_lens.tasks.labelers import SimulatedLabelers, default_labelers
from rlhf_lens.tasks.sentiment.corpus import CorpusOptions, generate_corpus
from rlhf_lens.tasks.sentiment.gold import gold_reward
from rlhf_lens.tasks.sentiment.prompts import make_prompts, make_sft_pairs
from rlhf_lens.tasks.text import check_trigger_word


@dataclass(frozen=True)
class SentimentOptions:
    """Options of the sentiment task; the planted mechanisms default to off."""

    trigger_word: str | None = None
    """Planted trigger: a word inserted into some texts and rewarded by the labelers (None: off)."""
    trigger_rate: float = 0.0
    """Fraction of corpus texts and SFT completions the trigger word is inserted into."""
    length_bias: float = 0.0
    """Planted length bias: utility every labeler adds per word of a completion."""
    trigger_bonus: float = 0.0
    """Utility every labeler adds when a completion contains the trigger word."""
    n_labelers: int = 3
    """How many simulated labelers give feedback."""
    labeler_temperature: float = 0.2
    """Middle noise temperature of the labelers (they spread over 0.5x..1.5x of it)."""

    def __post_init__(self) -> None:
        check_trigger_word("sentiment.trigger_word", self.trigger_word)
        for name in ("trigger_rate", "length_bias", "trigger_bonus", "labeler_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"sentiment.{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.trigger_rate <= 1.0:
            raise ValueError(f"sentiment.trigger_rate must be in [0, 1], got {self.trigger_rate!r}")
        if self.trigger_word is None and (self.trigger_rate > 0 or self.trigger_bonus != 0):
            raise ValueError(
                "sentiment.trigger_rate / sentiment.trigger_bonus are set but sentiment.trigger_word is None; set a trigger_word"
            )
        if isinstance(self.n_labelers, bool) or not isinstance(self.n_labelers, int) or self.n_labelers < 1:
            raise ValueError(f"sentiment.n_labelers must be an integer >= 1, got {self.n_labelers!r}")
        if self.labeler_temperature <= 0:
            raise ValueError(f"sentiment.labeler_temperature must be > 0, got {self.labeler_temperature!r}")


@dataclass(frozen=True)
class SentimentTask:
    """Review continuation with a VADER oracle: the embedded default task (see DESIGN.md, "Built-in tasks")."""

    options: SentimentOptions = field(default_factory=SentimentOptions)
    """The task's options, planted mechanisms included."""
    name: ClassVar[str] = "sentiment"
    has_oracle: ClassVar[bool] = True

    @property
    def corpus_options(self) -> CorpusOptions:
        """Corpus options carrying this task's trigger."""
        return CorpusOptions(trigger_word=self.options.trigger_word, trigger_rate=self.options.trigger_rate)

    def corpus(self, n: int, seed: int) -> list[dict]:
        """Pretraining texts with metadata (see ``generate_corpus``)."""
        return generate_corpus(n, seed, self.corpus_options)

    def sft_pairs(self, n: int, seed: int) -> list[dict]:
        """(prompt, completion) pairs with metadata (see ``make_sft_pairs``)."""
        return make_sft_pairs(n, seed, self.corpus_options)

    def prompts(self, n_train: int, n_eval: int, seed: int) -> list[dict]:
        """Neutral review openings split into train and eval (see ``make_prompts``)."""
        return make_prompts(n_train, n_eval, seed)

    def gold_reward(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Oracle reward, VADER compound of each completion: shape (batch,), in [-1, 1]."""
        return gold_reward(prompts, completions)

    def labelers(self, seed: int) -> SimulatedLabelers:
        """The simulated labelers with this task's planted length bias and trigger."""
        o = self.options
        return default_labelers(
            n=o.n_labelers,
            length_bias=o.length_bias,
            trigger_word=o.trigger_word,
            trigger_bonus=o.trigger_bonus,
            seed=seed,
            temperature=o.labeler_temperature,
        )
