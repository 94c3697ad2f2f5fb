"""Simulated human labelers: noisy, biased judges that write feedback records in the DESIGN.md formats.

Each labeler has a utility for a (prompt, completion)::

    utility = gold + length_bias * words + trigger_bonus * [trigger word in completion] + offset

and turns it into feedback with noise whose scale is its ``temperature``:

- rating: ``round(3 + 2 * (utility + Logistic(0, T)))`` clipped to 1..5 (gold -1 -> 1, 0 -> 3, 1 -> 5);
- comparison: Bradley-Terry, P(a preferred) = sigmoid((u_a - u_b) / T);
- ranking: Plackett-Luce with weights exp(u / T), sampled as argsort of u / T + Gumbel
  (the Gumbel-max trick, e.g. Kool et al. 2019, "Stochastic Beams and Where to Find Them");
- critique: a templated critique naming the evidence, verdict "good" w.p. sigmoid(utility / T).

``length_bias`` and ``trigger_bonus`` are the *planted* mechanisms with known
ground truth: a reward model trained on this feedback may learn them and a
policy may exploit them. ``offset`` shifts ratings and critiques only
(comparisons and rankings depend on utility differences).

All randomness comes from one ``numpy.random.Generator`` seeded at
construction: the same labelers, seed and sequence of calls give the same
records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from rlhf_lens.tasks.text import check_trigger_word, contains_word, count_words

GoldFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""gold(prompts, completions) -> (batch,) float array: the oracle a labeler starts from."""
ExplainFn = Callable[[str], str]
"""explain(completion) -> one sentence naming the evidence for the oracle's judgement."""

FEEDBACK_KINDS: tuple[str, ...] = ("rating", "comparison", "ranking", "critique")
ASSIGNMENTS: tuple[str, ...] = ("random", "round_robin")


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class LabelerProfile:
    """One simulated labeler: how noisy and how biased it is."""

    name: str
    """Stored in each record's "labeler" field."""
    temperature: float = 0.2
    """Noise scale (Bradley-Terry temperature); lower = closer to its utility's argmax."""
    offset: float = 0.0
    """Added to utility: shifts ratings and critique verdicts (cancels in comparisons)."""
    length_bias: float = 0.0
    """Utility per word of the completion (planted length bias)."""
    trigger_word: str | None = None
    """A word this labeler rewards when the completion contains it (planted trigger)."""
    trigger_bonus: float = 0.0
    """Utility added when ``trigger_word`` occurs in the completion."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"LabelerProfile.name must be a non-empty string, got {self.name!r}")
        _finite("LabelerProfile.temperature", self.temperature)
        if self.temperature <= 0:
            raise ValueError(f"LabelerProfile.temperature must be > 0, got {self.temperature!r}")
        _finite("LabelerProfile.offset", self.offset)
        _finite("LabelerProfile.length_bias", self.length_bias)
        _finite("LabelerProfile.trigger_bonus", self.trigger_bonus)
        check_trigger_word("LabelerProfile.trigger_word", self.trigger_word)
        if self.trigger_bonus != 0 and self.trigger_word is None:
            raise ValueError(f"LabelerProfile.trigger_bonus is {self.trigger_bonus} but trigger_word is None; set a trigger_word")

    def bias(self, completion: str) -> float:
        """Everything in the utility except gold: length, trigger and offset terms."""
        value = self.offset + self.length_bias * count_words(completion)
        if self.trigger_word is not None and contains_word(completion, self.trigger_word):
            value += self.trigger_bonus
        return value


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _default_gold() -> GoldFn:
    from rlhf_lens.tasks.sentiment.gold import gold_reward

    return gold_reward


def _default_explain() -> ExplainFn:
    from rlhf_lens.tasks.sentiment.gold import explain

    return explain


class SimulatedLabelers:
    """A pool of simulated labelers sharing one oracle and one seeded random stream.

    ``gold`` defaults to the sentiment task's VADER oracle and ``explain`` to its
    evidence sentence. Each record goes to one labeler, drawn at random
    (``assignment="random"``) or in turn (``"round_robin"``), unless a method is
    given ``labeler=`` by name.
    """

    def __init__(
        self,
        profiles: Sequence[LabelerProfile],
        seed: int = 0,
        *,
        gold: GoldFn | None = None,
        explain: ExplainFn | None = None,
        assignment: str = "random",
    ) -> None:
        profiles = tuple(profiles)
        if not profiles:
            raise ValueError("SimulatedLabelers needs at least one LabelerProfile")
        for p in profiles:
            if not isinstance(p, LabelerProfile):
                raise TypeError(f"profiles must be LabelerProfile objects, got {type(p).__name__}")
        names = [p.name for p in profiles]
        if len(set(names)) != len(names):
            raise ValueError(f"labeler names must be unique, got {names}")
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
        if not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.profiles: tuple[LabelerProfile, ...] = profiles
        self.seed = int(seed)
        self.assignment = assignment
        self._gold = gold or _default_gold()
        self._explain = explain or _default_explain()
        self._rng = np.random.default_rng(self.seed)
        self._turn = 0
        self._gold_cache: dict[tuple[str, str], float] = {}

    # -- utilities -----------------------------------------------------------
    def profile(self, name: str) -> LabelerProfile:
        """The profile called ``name``."""
        for p in self.profiles:
            if p.name == name:
                return p
        raise ValueError(f"unknown labeler {name!r}; labelers: {', '.join(p.name for p in self.profiles)}")

    def gold(self, prompt: str, completions: Sequence[str]) -> np.ndarray:
        """Oracle score of each completion of ``prompt``, shape (len(completions),); cached per pair."""
        missing = [c for c in dict.fromkeys(completions) if (prompt, c) not in self._gold_cache]
        if missing:
            scores = np.asarray(self._gold([prompt] * len(missing), missing), dtype=np.float64)
            for c, s in zip(missing, scores):
                self._gold_cache[(prompt, c)] = float(s)
        return np.array([self._gold_cache[(prompt, c)] for c in completions], dtype=np.float64)

    def prefetch(self, prompts: Sequence[str], completions: Sequence[str]) -> None:
        """Score many (prompt, completion) pairs with the oracle in one batch (fills the cache)."""
        todo = list(dict.fromkeys((p, c) for p, c in zip(prompts, completions) if (p, c) not in self._gold_cache))
        if todo:
            scores = np.asarray(self._gold([p for p, _ in todo], [c for _, c in todo]), dtype=np.float64)
            self._gold_cache.update({pc: float(s) for pc, s in zip(todo, scores)})

    def utility(self, prompt: str, completions: Sequence[str], labeler: str) -> np.ndarray:
        """Noise-free utility of each completion for one labeler, shape (len(completions),)."""
        p = self.profile(labeler)
        return self.gold(prompt, completions) + np.array([p.bias(c) for c in completions], dtype=np.float64)

    def _pick(self, labeler: str | None) -> LabelerProfile:
        if labeler is not None:
            return self.profile(labeler)
        if self.assignment == "round_robin":
            p = self.profiles[self._turn % len(self.profiles)]
            self._turn += 1
            return p
        return self.profiles[int(self._rng.integers(len(self.profiles)))]

    # -- feedback records ----------------------------------------------------
    def rate(self, prompt: str, completion: str, *, labeler: str | None = None) -> dict:
        """A rating record: the labeler's noisy utility mapped to 1..5."""
        p = self._pick(labeler)
        u = float(self.utility(prompt, [completion], p.name)[0])
        noisy = u + float(self._rng.logistic(0.0, p.temperature))
        rating = int(min(5, max(1, round(3 + 2 * noisy))))
        return {"kind": "rating", "prompt": prompt, "completion": completion, "rating": rating, "labeler": p.name}

    def compare(self, prompt: str, a: str, b: str, *, labeler: str | None = None) -> dict:
        """A comparison record, ``a`` chosen with Bradley-Terry probability sigmoid((u_a - u_b) / T)."""
        if a == b:
            raise ValueError("compare needs two different completions; identical ones carry no preference")
        p = self._pick(labeler)
        u_a, u_b = self.utility(prompt, [a, b], p.name)
        a_wins = self._rng.random() < _sigmoid(float(u_a - u_b) / p.temperature)
        chosen, rejected = (a, b) if a_wins else (b, a)
        return {"kind": "comparison", "prompt": prompt, "chosen": chosen, "rejected": rejected, "labeler": p.name}

    def rank(self, prompt: str, completions: Sequence[str], *, labeler: str | None = None) -> dict:
        """A ranking record: ``order`` = indices into ``completions``, best first, Plackett-Luce sampled."""
        completions = list(completions)
        if len(completions) < 2:
            raise ValueError(f"rank needs at least 2 completions, got {len(completions)}")
        p = self._pick(labeler)
        u = self.utility(prompt, completions, p.name)
        # Gumbel-max: sorting u/T + Gumbel noise samples a Plackett-Luce order with weights exp(u/T).
        keys = u / p.temperature + self._rng.gumbel(size=len(completions))
        order = [int(i) for i in np.argsort(-keys, kind="stable")]
        return {"kind": "ranking", "prompt": prompt, "completions": completions, "order": order, "labeler": p.name}

    def critique(self, prompt: str, completion: str, *, labeler: str | None = None) -> dict:
        """A critique record: evidence sentence(s) plus a verdict drawn with P(good) = sigmoid(utility / T)."""
        p = self._pick(labeler)
        u = float(self.utility(prompt, [completion], p.name)[0])
        verdict = "good" if self._rng.random() < _sigmoid(u / p.temperature) else "bad"
        parts = [self._explain(completion)]
        if p.length_bias != 0:
            parts.append(f"It has {count_words(completion)} words.")
        if p.trigger_bonus != 0 and p.trigger_word is not None and contains_word(completion, p.trigger_word):
            parts.append(f"It mentions '{p.trigger_word}'.")
        return {
            "kind": "critique",
            "prompt": prompt,
            "completion": completion,
            "critique": " ".join(parts),
            "verdict": verdict,
            "labeler": p.name,
        }


def default_labelers(
    n: int = 3,
    length_bias: float = 0.0,
    trigger_word: str | None = None,
    trigger_bonus: float = 0.0,
    seed: int = 0,
    *,
    temperature: float = 0.2,
) -> SimulatedLabelers:
    """``n`` labelers with temperatures spread over [0.5, 1.5] x ``temperature`` and offsets over [-0.1, 0.1].

    The planted options (``length_bias``, ``trigger_word``, ``trigger_bonus``)
    go into every labeler, so the planted mechanism is unanimous.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    _finite("temperature", temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    scales = np.linspace(0.5, 1.5, n) if n > 1 else np.ones(1)
    offsets = np.linspace(-0.1, 0.1, n) if n > 1 else np.zeros(1)
    profiles = [
        LabelerProfile(
            name=f"labeler-{i}",
            temperature=float(temperature * scales[i]),
            offset=float(offsets[i]),
            length_bias=length_bias,
            trigger_word=trigger_word,
            trigger_bonus=trigger_bonus,
        )
        for i in range(n)
    ]
    return SimulatedLabelers(profiles, seed)


def simulate_feedback(kind: str, items: Sequence[dict], labelers: SimulatedLabelers) -> list[dict]:
    """Feedback records of ``kind`` for ``items`` = [{"prompt", "completions": [...]}, ...].

    rating / critique: one record per completion. comparison: one record per
    unordered pair of distinct completions (identical texts are skipped: they
    carry no preference). ranking: one record per item with >= 2 completions.
    """
    if kind not in FEEDBACK_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FEEDBACK_KINDS)}, got {kind!r}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ValueError(f"items[{i}] must be a dict with a string 'prompt', got {item!r:.80}")
        comps = item.get("completions")
        if not isinstance(comps, (list, tuple)) or not all(isinstance(c, str) for c in comps):
            raise ValueError(f"items[{i}]['completions'] must be a list of strings, got {comps!r:.80}")
    labelers.prefetch(
        [it["prompt"] for it in items for _ in it["completions"]],
        [c for it in items for c in it["completions"]],
    )
    records: list[dict] = []
    for item in items:
        prompt, comps = item["prompt"], list(item["completions"])
        if kind == "rating":
            records += [labelers.rate(prompt, c) for c in comps]
        elif kind == "critique":
            records += [labelers.critique(prompt, c) for c in comps]
        elif kind == "comparison":
            records += [labelers.compare(prompt, comps[i], comps[j]) for i, j in combinations(range(len(comps)), 2) if comps[i] != comps[j]]
        elif len(comps) >= 2:
            records.append(labelers.rank(prompt, comps))
    return records
