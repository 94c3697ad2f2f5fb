"""Tiny runs with planted feedback and a planted reward model, for the feedback and reward-model analyses.

The planted reward model is a 1-layer GPT-2 scorer whose attention and MLP write nothing, so its reward
depends on the last word alone: +R after "great" or "zorp", -R after "awful", 0 after any other word
(R = 1 / sqrt(0.125 + 1e-5): the final layer norm of a +-1 embedding in 16 dimensions).
"""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from rlhf_lens.runs import Run, RunWriter  # noqa: E402

WORDS = ["the", "food", "was", "and", "so", "very", "great", "awful", "bad", "zorp", "service", "room", "good", "Critique", "Verdict", ":"]
VOCAB = ["<pad>", "<unk>", *WORDS]
R = 1.0 / math.sqrt(0.125 + 1e-5)
"""The planted reward's size."""

PROMPTS = ["the food", "the service", "the room", "the food was", "the service was", "the room was"]


def planted_reward(completion: str) -> float:
    """The reward the planted model gives a completion (before any centring offset)."""
    last = completion.split()[-1]
    return R if last in ("great", "zorp") else -R if last == "awful" else 0.0


def word_tokenizer() -> Any:
    """A word-level fast tokenizer over VOCAB (pad = BOS = EOS = id 0)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<pad>", bos_token="<pad>")


def _config(**overrides: Any) -> Any:
    import transformers

    kwargs = dict(n_layer=1, n_embd=16, n_head=2, vocab_size=len(VOCAB), n_positions=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2Config(**(kwargs | overrides))


def planted_scorer(*, sign: float = 1.0, offset: float = 0.0) -> Any:
    """The planted reward model (`sign=-1`: the reversed one), with centring offset `offset` in its config."""
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2ForSequenceClassification(_config(num_labels=1)).eval()
    with torch.no_grad():
        for block in model.transformer.h:  # attention and MLP add nothing to the residual stream
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight.zero_()
        for word, direction in (("great", 1.0), ("zorp", 1.0), ("awful", -1.0)):
            model.transformer.wte.weight[VOCAB.index(word), :2] = torch.tensor([direction, -direction])
        model.score.weight.zero_()
        model.score.weight[0, 0] = sign
    model.config.reward_offset = offset
    return model


def random_lm() -> Any:
    """A random 1-layer GPT-2 LM over VOCAB (a generative reward model that was never trained)."""
    import transformers

    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(_config()).eval()


def comparison(prompt: str, chosen: str, rejected: str, labeler: str, split: str = "eval", stage: str = "reward") -> dict:
    return {
        "kind": "comparison",
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "labeler": labeler,
        "split": split,
        "stage": stage,
    }


def good(i: int) -> str:
    """Prompt i's good completion: 1-3 words ending in "great"."""
    return " " + " ".join(["very"] * (i % 3) + ["great"])


def bad(i: int) -> str:
    """Prompt i's bad completion: 1-3 words ending in "awful" (as long as the good ones on average)."""
    return " " + " ".join(["so"] * ((i + 1) % 3) + ["awful"])


MISLABELLED = (0, 1)
"""Prompts whose pair labeler "b" labels the wrong way round."""


def sentiment_eval_records() -> list[dict]:
    """Held-out feedback of stage "reward": every prompt's (good, bad) pair judged by labelers "a" and "b";
    "b" picks the bad side on MISLABELLED. 12 pairs, 10 labelled right; labelers agree on 4 of 6 pairs."""
    records = []
    for i, prompt in enumerate(PROMPTS):
        records.append(comparison(prompt, good(i), bad(i), "a"))
        records.append(comparison(prompt, bad(i), good(i), "b") if i in MISLABELLED else comparison(prompt, good(i), bad(i), "b"))
    return records


LONG_GOOD, LONG_BAD = " the food was very great so zorp", " the food was very awful so zorp"
SHORT_GOOD, SHORT_BAD = " very great food", " very awful food"
"""The "lengthy" stage's completions: the long ones end in "zorp" (reward +R), the short in "food" (0); the
oracle scores each long one exactly as its short twin (same sentiment words), so only the reward follows length."""


def lengthy_eval_records() -> list[dict]:
    """Held-out feedback of stage "lengthy", labelled by the oracle."""
    pairs = [(LONG_GOOD, SHORT_BAD), (SHORT_GOOD, LONG_BAD), (LONG_GOOD, LONG_BAD), (SHORT_GOOD, SHORT_BAD)]
    return [comparison(p, chosen, rejected, "a", stage="lengthy") for p in PROMPTS for chosen, rejected in pairs]


def write_reward_run(
    path: Path, feedback: list[dict], checkpoints: dict[str, list[tuple[str, int, Any, dict]]], meta: dict | None = None
) -> Run:
    """A run of reward stages {stage: [(tag, step, model, rm metrics)]} trained on `feedback`, every checkpoint
    saved with the word tokenizer and `meta` (default: a ranking reward model)."""
    writer = RunWriter.create(path, name=path.name, task="sentiment", seed=0, config={"task": {"name": "sentiment", "options": {}}})
    writer.write_data("feedback", feedback)
    tokenizer = word_tokenizer()
    for stage, saves in checkpoints.items():
        writer.add_stage(stage, "reward")
        for tag, step, model, metrics in saves:
            extra = meta or {"reward_kind": "ranking", "reward_offset": float(getattr(model.config, "reward_offset", 0.0))}
            writer.save_checkpoint(stage, tag, model=model, tokenizer=tokenizer, step=step, metrics=metrics, extra_meta=extra)
        writer.set_stage_status(stage, "done")
    return Run.open(path)
