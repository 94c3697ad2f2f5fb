"""Sentiment-neutral review openings (policy prompts) and SFT (prompt, completion) pairs.

An opening is a review start that commits to no sentiment: "The hotel room
was", "I watched this movie last night and", "My new phone". Each opening has
a *slot*, the grammatical shape its continuation must take:

- ``adj``: continues with an adjective phrase ("The room was" + " very clean.")
- ``vp``: continues with a verb phrase ("My new phone" + " is really good.")
- ``clause``: continues with a clause ("... last night and" + " the acting was great.")
- ``sentence``: continues with whole sentences ("... last night." + " The acting was great.")

SFT completions fill the slot with the corpus grammar and may add up to two
more sentences; they start with a space so ``prompt + completion`` reads as
one text. The opening pool has ~2,000 distinct strings over 7 domains.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from rlhf_lens.tasks.sentiment.corpus import (
    SENTIMENTS,
    CorpusOptions,
    annotate,
    domain_by_name,
    insert_word,
    write_sentences,
)
from rlhf_lens.tasks.sentiment.grammar import (
    CLAUSE_KINDS,
    CONTRAST,
    NEUTRAL,
    Grammar,
    sentence_plan,
)
from rlhf_lens.tasks.sentiment.vocab import DOMAINS, Aspect, Domain

SLOTS: tuple[str, ...] = ("adj", "vp", "clause", "sentence")


@dataclass(frozen=True)
class Opening:
    """One neutral review opening and the shape its continuation must take."""

    text: str
    """The prompt string."""
    domain: str
    """Domain name."""
    slot: str
    """One of SLOTS."""
    template: str
    """Which template made it (openings are drawn evenly over (domain, template))."""
    aspect: Aspect | None = None
    """The aspect the opening already names, if any (the continuation talks about it)."""


def _domain_openings(d: Domain) -> list[Opening]:
    this = "these" if d.plural else "this"
    out: list[Opening] = []

    def add(text: str, slot: str, template: str, aspect: Aspect | None = None) -> None:
        out.append(Opening(text, d.name, slot, template, aspect))

    for a in d.aspects:
        add(f"The {a.name} {d.be()}", "adj", "aspect", a)
        for noun in d.nouns:
            add(f"The {a.name} of {this} {noun} {d.be()}", "adj", "aspect_of", a)
    for noun in d.nouns:
        add(f"{this.capitalize()} {noun}", "vp", "noun")
        if d.owned:
            add(f"My new {noun}", "vp", "noun")
    for act in d.activities:
        for time in d.times:
            start = f"{act} {time}"
            add(f"{start} and", "clause", "activity_and")
            add(f"{start}.", "sentence", "activity")
            for a in d.aspects:
                add(f"{start} and the {a.name} {d.be()}", "adj", "activity_aspect", a)
                add(f"{start}. The {a.name} {d.be()}", "adj", "activity_then_aspect", a)
    return out


@functools.lru_cache(maxsize=1)
def all_openings() -> tuple[Opening, ...]:
    """Every distinct opening, in a fixed order (a string shared by two domains keeps the first)."""
    seen: set[str] = set()
    out = []
    for d in DOMAINS:
        for o in _domain_openings(d):
            if o.text not in seen:
                seen.add(o.text)
                out.append(o)
    return tuple(out)


def _balanced_order(rng: random.Random) -> list[Opening]:
    """All openings shuffled so that every prefix is spread evenly over (domain, template) groups."""
    groups: dict[tuple[str, str], list[Opening]] = {}
    for o in all_openings():
        groups.setdefault((o.domain, o.template), []).append(o)
    keyed = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        keyed.extend((rank + rng.random(), o.text, o) for rank, o in enumerate(members))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [o for _, _, o in keyed]


def make_prompts(n_train: int, n_eval: int, seed: int) -> list[dict]:
    """Policy prompts ``{"id": "p00012", "split": "train"|"eval", "prompt", "domain"}``, train first.

    Eval prompts are distinct strings never used in train. Train prompts are
    distinct too while the pool lasts; past that, train cycles through the
    non-eval openings again (ids stay unique).
    """
    for name, value in (("n_train", n_train), ("n_eval", n_eval), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"n_train and n_eval must be >= 0, got n_train={n_train}, n_eval={n_eval}")
    order = _balanced_order(random.Random(seed))
    if n_eval > len(order) - (1 if n_train else 0):
        raise ValueError(
            f"n_eval={n_eval} is too large: there are {len(order)} distinct openings and train needs at least one; "
            f"use n_eval <= {len(order) - 1}"
        )
    eval_part, train_pool = order[:n_eval], order[n_eval:]
    train_part = [train_pool[i % len(train_pool)] for i in range(n_train)] if n_train else []
    records = []
    for split, part in (("train", train_part), ("eval", eval_part)):
        for o in part:
            records.append({"id": f"p{len(records):05d}", "split": split, "prompt": o.text, "domain": o.domain})
    return records


def _first_piece(grammar: Grammar, opening: Opening, domain: Domain, polarity: int, aspects: list[Aspect]) -> str:
    """The text that fills the opening's slot, without the leading space; ``aspects`` are free ones."""
    rng = grammar.rng
    aspect = opening.aspect or aspects[0]
    other = aspects[0] if aspects[0] is not aspect else aspects[1]
    sign = rng.choice((1, -1)) if polarity == CONTRAST else polarity
    if opening.slot == "adj":
        head = grammar.adj_phrase(aspect, sign)
    elif opening.slot == "vp":
        head = grammar.noun_predicate(domain, aspect, sign)
    else:
        head = grammar.clause(domain, aspect, sign, rng.choice(CLAUSE_KINDS))
        if opening.slot == "clause" and not head.startswith("I "):
            head = head[0].lower() + head[1:]
    if polarity == CONTRAST:
        return head + grammar.contrast_tail(domain, other, -sign)
    return head + "."


def make_sft_pairs(n: int, seed: int, options: CorpusOptions | None = None, max_sentences: int = 3) -> list[dict]:
    """``n`` SFT pairs ``{"prompt", "completion", "domain", "sentiment", "negation", "intensifier", "trigger", "length"}``.

    Prompts are openings drawn evenly over (domain, template); completions are
    1..``max_sentences`` sentences of positive, negative or mixed sentiment
    (``options.sentiment_weights``), starting with a space. Metadata describes
    the completion alone (``length`` = its word count). ``options`` also plants
    the trigger word in a ``trigger_rate`` fraction of completions.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(max_sentences, int) or max_sentences < 1:
        raise ValueError(f"max_sentences must be an integer >= 1, got {max_sentences!r}")
    opts = options or CorpusOptions()
    rng = random.Random(seed)
    grammar = Grammar(rng, opts.rates)
    groups: dict[tuple[str, str], list[Opening]] = {}
    for o in all_openings():
        if o.domain in opts.domains:
            groups.setdefault((o.domain, o.template), []).append(o)
    keys = sorted(groups)
    weights = list(opts.sentiment_weights)
    pairs = []
    for _ in range(n):
        opening = rng.choice(groups[rng.choice(keys)])
        domain = domain_by_name(opening.domain)
        label = rng.choices(SENTIMENTS, weights)[0]
        plan = sentence_plan(rng, label, rng.randint(1, max_sentences), opts.rates.neutral_rate)
        if plan[0] == NEUTRAL:  # the slot needs a polar phrase; move a polar sentence first
            k = next(i for i, code in enumerate(plan) if code != NEUTRAL)
            plan[0], plan[k] = plan[k], plan[0]
        free = [a for a in rng.sample(domain.aspects, len(domain.aspects)) if a is not opening.aspect]
        pieces = [_first_piece(grammar, opening, domain, plan[0], free)]
        pieces += write_sentences(grammar, domain, plan[1:], free[1:] or free)
        completion = " " + " ".join(pieces)
        if opts.trigger_word is not None and rng.random() < opts.trigger_rate:
            completion = insert_word(completion, opts.trigger_word, rng, leading=" ")
        meta = annotate(completion, domain.name, label, opts.trigger_word)
        meta.pop("text")
        pairs.append({"prompt": opening.text, "completion": completion, **meta})
    return pairs
