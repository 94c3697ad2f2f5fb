"""The built-in sentiment task: procedural reviews, neutral prompts, a VADER oracle."""

from rlhf_lens.tasks.sentiment.corpus import SENTIMENTS, CorpusOptions, generate_corpus
from rlhf_lens.tasks.sentiment.gold import explain, gold_reward, gold_score, word_valence
from rlhf_lens.tasks.sentiment.grammar import GrammarRates
from rlhf_lens.tasks.sentiment.prompts import make_prompts, make_sft_pairs
from rlhf_lens.tasks.sentiment.task import SentimentOptions, SentimentTask
from rlhf_lens.tasks.sentiment.vocab import DOMAIN_NAMES

__all__ = [
    "word_valence",
    "DOMAIN_NAMES",
    "SENTIMENTS",
    "CorpusOptions",
    "GrammarRates",
    "SentimentOptions",
    "SentimentTask",
    "explain",
    "generate_corpus",
    "gold_reward",
    "gold_score",
    "make_prompts",
    "make_sft_pairs",
]
