"""Fixtures for rlhf_lens.runs tests: tiny models built from configs (no downloads) and fresh runs."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any

import pytest  # noqa: E402
import torch  # noqa: E402

from rlhf_lens.runs import RunWriter  # noqa: E402

VOCAB = ["<pad>", "<unk>"] + [f"w{i}" for i in range(48)]  # 50 tokens, id 0 is pad/bos/eos


def gpt2_config(**overrides: Any) -> Any:
    import transformers

    kwargs = dict(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    kwargs.update(overrides)
    return transformers.GPT2Config(**kwargs)


def tiny_lm(seed: int = 0) -> Any:
    """A 1-layer GPT-2 LM with weights fixed by `seed`."""
    import transformers

    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(gpt2_config()).eval()


def tiny_scorer(seed: int = 0) -> Any:
    """A 1-layer GPT-2 with a scalar score head (a reward or value model)."""
    import transformers

    torch.manual_seed(seed)
    return transformers.GPT2ForSequenceClassification(gpt2_config(num_labels=1)).eval()


def tiny_tokenizer() -> Any:
    """A word-level fast tokenizer over VOCAB, built in memory."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<pad>", bos_token="<pad>")


def same_weights(a: Any, b: Any) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def tiny() -> SimpleNamespace:
    """Model helpers: tiny.lm(seed), tiny.scorer(seed), tiny.tokenizer(), tiny.same_weights(a, b)."""
    return SimpleNamespace(lm=tiny_lm, scorer=tiny_scorer, tokenizer=tiny_tokenizer, same_weights=same_weights, config=gpt2_config)


@pytest.fixture
def new_run(tmp_path: Path) -> Callable[..., RunWriter]:
    """Factory: a fresh run with the given stages {name: kind}."""

    def make(stages: dict[str, str] | None = None, name: str = "run") -> RunWriter:
        writer = RunWriter.create(tmp_path / name, name=name, task="sentiment", seed=7, config={"lr": 1e-3, "model": {"n_layer": 1}})
        for stage, kind in (stages or {}).items():
            writer.add_stage(stage, kind)
        return writer

    return make
