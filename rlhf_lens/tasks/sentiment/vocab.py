"""Word lists of the sentiment task: domains, aspects, adjectives and neutral sentences.

Data only. Every polar word here is in VADER's lexicon with the sign it is
listed under (a unit test checks this), so the gold labeler and the corpus
labels agree by construction; neutral sentences and prompt openings contain
no VADER lexicon word at all. The vocabulary is kept small on purpose: the
demo trains a ~1000-token BPE and a 4-layer GPT-2 on it in about a minute.
"""

from __future__ import annotations

from dataclasses import dataclass

NEGATORS: tuple[str, ...] = ("not", "never")
"""Words that mark a negated sentence; the corpus' ``negation`` flag is "one of these occurs"."""

INTENSIFIERS: tuple[str, ...] = ("very", "really", "extremely", "incredibly")
"""VADER booster words; the corpus' ``intensifier`` flag is "one of these occurs"."""

POSITIVE: tuple[str, ...] = (
    "good", "great", "excellent", "wonderful", "amazing", "lovely", "fantastic",
    "nice", "perfect", "superb", "brilliant", "awesome", "impressive", "enjoyable",
    "pleasant",
)  # fmt: skip
"""Positive adjectives usable with any aspect."""

NEGATIVE: tuple[str, ...] = (
    "bad", "terrible", "awful", "horrible", "poor", "disappointing", "weak",
    "dull", "annoying", "useless",
)  # fmt: skip
"""Negative adjectives usable with any aspect."""

MILD_NEGATIVE: tuple[str, ...] = ("boring", "disappointing", "dull", "annoying")
"""Negative adjectives that read naturally after "never" ("never disappointing" = positive)."""

POSITIVE_VERBS: tuple[str, ...] = ("loved", "liked", "enjoyed")
NEGATIVE_VERBS: tuple[str, ...] = ("hated", "disliked")
NEGATED_VERBS: tuple[str, ...] = ("like", "enjoy")
"""Verbs after "did not" in a negative sentence ("I did not enjoy the food")."""


@dataclass(frozen=True)
class Aspect:
    """One thing a review talks about, with adjectives that only fit it."""

    name: str
    """The noun phrase, singular, e.g. "battery"."""
    positive: tuple[str, ...] = ()
    """Extra positive adjectives for this aspect (on top of POSITIVE)."""
    negative: tuple[str, ...] = ()
    """Extra negative adjectives for this aspect (on top of NEGATIVE)."""


@dataclass(frozen=True)
class Domain:
    """One kind of product or place under review."""

    name: str
    """Domain key stored in the metadata, e.g. "hotel"."""
    nouns: tuple[str, ...]
    """Words for the reviewed thing ("movie", "film")."""
    plural: bool
    """Whether the nouns are plural ("these headphones are")."""
    past: bool
    """Past tense ("the room was") or present tense ("the screen is")."""
    aspects: tuple[Aspect, ...]
    """What reviews in this domain talk about."""
    neutral: tuple[str, ...]
    """Full sentences with no sentiment ("We stayed there for two nights.")."""
    activities: tuple[str, ...]
    """Neutral prompt openings, each followed by one of ``times``."""
    times: tuple[str, ...]
    """Phrases completing an activity ("last night")."""
    owned: bool = False
    """Whether "My new <noun>" is a natural opening (products, not places)."""

    def be(self, plural: bool = False) -> str:
        """The form of "to be" for an aspect (singular) or the noun (``plural``)."""
        if self.past:
            return "were" if plural else "was"
        return "are" if plural else "is"

    def have(self, plural: bool = False) -> str:
        """The form of "to have" for the noun."""
        if self.past:
            return "had"
        return "have" if plural else "has"


def _aspects(*items: tuple[str, str, str] | str) -> tuple[Aspect, ...]:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(Aspect(item))
        else:
            name, pos, neg = item
            out.append(Aspect(name, tuple(pos.split()), tuple(neg.split())))
    return tuple(out)


DOMAINS: tuple[Domain, ...] = (
    Domain(
        name="movie",
        nouns=("movie", "film"),
        plural=False,
        past=True,
        aspects=_aspects(
            ("acting", "charming", "boring"),
            ("plot", "", "boring confusing"),
            ("ending", "beautiful", "confusing"),
            ("soundtrack", "beautiful", ""),
            ("script", "funny", "boring"),
            ("story", "beautiful", "boring confusing"),
            ("dialogue", "funny", "boring"),
            ("camera work", "beautiful", ""),
        ),
        neutral=(
            "I watched it at home.",
            "It is about two hours long.",
            "I saw it with my brother.",
            "The movie came out last year.",
            "We bought the tickets online.",
            "It is based on a book.",
        ),
        activities=("I watched this movie", "We saw this film", "I rented this movie"),
        times=("last night", "last week", "on friday", "at home", "with my brother", "at the cinema"),
    ),
    Domain(
        name="restaurant",
        nouns=("restaurant", "place"),
        plural=False,
        past=True,
        aspects=_aspects(
            ("food", "delicious fresh", ""),
            ("service", "friendly helpful", "rude"),
            ("pasta", "delicious", ""),
            ("soup", "delicious", ""),
            ("dessert", "delicious", ""),
            ("waiter", "friendly helpful", "rude"),
            ("pizza", "delicious fresh", ""),
            ("menu", "", "confusing"),
        ),
        neutral=(
            "We went there for dinner.",
            "We ordered the pasta and a salad.",
            "The place is near the station.",
            "We had a table by the window.",
            "It was busy on a saturday.",
            "I went there with my sister.",
        ),
        activities=("We had dinner at this restaurant", "I went to this place", "We ate here"),
        times=("last night", "last week", "on saturday", "with my sister", "after work"),
    ),
    Domain(
        name="hotel",
        nouns=("hotel",),
        plural=False,
        past=True,
        aspects=_aspects(
            ("room", "clean comfortable", "dirty noisy"),
            ("bed", "comfortable", "uncomfortable"),
            ("staff", "friendly helpful", "rude"),
            ("breakfast", "delicious fresh", ""),
            ("pool", "clean", "dirty"),
            ("view", "beautiful", ""),
            ("bathroom", "clean", "dirty"),
            ("location", "", "noisy"),
        ),
        neutral=(
            "We stayed there for two nights.",
            "The hotel is near the beach.",
            "Our room was on the third floor.",
            "We checked in at noon.",
            "I was there for a conference.",
            "There is parking next to the hotel.",
        ),
        activities=("We stayed at this hotel", "I booked this hotel"),
        times=("last month", "for two nights", "for a week", "for a conference", "in the summer"),
    ),
    Domain(
        name="phone",
        nouns=("phone",),
        plural=False,
        past=False,
        owned=True,
        aspects=_aspects(
            ("screen", "beautiful clear", "broken"),
            ("battery", "", "broken"),
            ("camera", "clear", ""),
            ("speaker", "clear", ""),
            ("design", "beautiful", "ugly"),
            ("software", "", "confusing"),
            ("charger", "", "broken"),
        ),
        neutral=(
            "I bought it last month.",
            "It came in a small box.",
            "I use it every day.",
            "The phone has two cameras.",
            "I switched from an older model.",
            "It comes with a usb cable.",
        ),
        activities=("I bought this phone", "I got this phone", "I ordered this phone"),
        times=("last month", "a week ago", "in the spring", "for my birthday", "online"),
    ),
    Domain(
        name="book",
        nouns=("book",),
        plural=False,
        past=True,
        aspects=_aspects(
            ("story", "beautiful", "boring confusing"),
            ("writing", "beautiful clear", "confusing"),
            ("ending", "beautiful", "confusing"),
            ("plot", "", "boring confusing"),
            ("main character", "charming funny", "boring"),
            ("first chapter", "funny", "boring"),
            ("dialogue", "funny", "boring"),
            ("cover", "beautiful", "ugly"),
        ),
        neutral=(
            "I read it on the train.",
            "The book has three hundred pages.",
            "It is the second book in the series.",
            "I read it in two weeks.",
            "My sister gave it to me.",
            "The story takes place in a small town.",
        ),
        activities=("I read this book", "I finished this book"),
        times=("last week", "on the train", "in two days", "last summer", "at night"),
    ),
    Domain(
        name="headphones",
        nouns=("headphones",),
        plural=True,
        past=False,
        owned=True,
        aspects=_aspects(
            ("sound", "clear", ""),
            ("bass", "powerful", "weak"),
            ("battery", "", "broken"),
            ("padding", "comfortable", "uncomfortable"),
            ("case", "", "broken ugly"),
            ("microphone", "clear", "broken"),
            ("cable", "", "broken"),
        ),
        neutral=(
            "I use them on the bus.",
            "They came with a small case.",
            "I bought them last month.",
            "I wear them at my desk.",
            "They connect with bluetooth.",
            "I use them every day.",
        ),
        activities=("I bought these headphones", "I got these headphones", "I ordered these headphones"),
        times=("last month", "a week ago", "in the spring", "for my birthday", "online"),
    ),
    Domain(
        name="laptop",
        nouns=("laptop",),
        plural=False,
        past=False,
        owned=True,
        aspects=_aspects(
            ("screen", "beautiful clear", "broken"),
            ("keyboard", "comfortable", "uncomfortable"),
            ("battery", "", "broken"),
            ("trackpad", "", "broken"),
            ("cooling", "", "noisy"),
            ("speaker", "clear", "weak"),
            ("design", "beautiful", "ugly"),
            ("performance", "powerful", "weak"),
        ),
        neutral=(
            "I bought it for school.",
            "It came with a charger.",
            "I use it for my job every day.",
            "It has two usb ports.",
            "I switched from an older model.",
            "The laptop weighs about two kilos.",
        ),
        activities=("I bought this laptop", "I got this laptop", "I ordered this laptop"),
        times=("last month", "a week ago", "for school", "in the spring", "online"),
    ),
)
"""The built-in review domains."""

DOMAIN_NAMES: tuple[str, ...] = tuple(d.name for d in DOMAINS)
