"""Built-in tasks, simulated labelers and feedback formats.

``get_task("sentiment", trigger_word="zorp", trigger_rate=0.1, trigger_bonus=0.5)``
gives a task with a corpus, SFT pairs, prompts, an oracle and labelers with the
planted mechanisms; ``read_feedback`` / ``validate_record`` handle feedback files.
"""

from rlhf_lens.tasks.feedback import FeedbackError, read_feedback, split_hh_pair, validate_record
from rlhf_lens.tasks.labelers import (
    FEEDBACK_KINDS,
    LabelerProfile,
    SimulatedLabelers,
    default_labelers,
    simulate_feedback,
)
from rlhf_lens.tasks.registry import TASKS, Task, get_task
from rlhf_lens.tasks.sentiment import (
    CorpusOptions,
    SentimentOptions,
    SentimentTask,
    generate_corpus,
    gold_reward,
    gold_score,
    make_prompts,
    make_sft_pairs,
)
from rlhf_lens.tasks.text import contains_word, count_words

__all__ = [
    "FEEDBACK_KINDS",
    "TASKS",
    "CorpusOptions",
    "FeedbackError",
    "LabelerProfile",
    "SentimentOptions",
    "SentimentTask",
    "SimulatedLabelers",
    "Task",
    "contains_word",
    "count_words",
    "default_labelers",
    "generate_corpus",
    "get_task",
    "gold_reward",
    "gold_score",
    "make_prompts",
    "make_sft_pairs",
    "read_feedback",
    "simulate_feedback",
    "split_hh_pair",
    "validate_record",
]
