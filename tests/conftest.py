"""Shared fixtures. The shared run (quick recipe: base + sft) is trained once per test session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers.utils import logging as hf_logging  # noqa: E402 - after the environment above

hf_logging.set_verbosity_error()  # keep load reports of fresh score heads out of test logs

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK_RECIPE = REPO / "training" / "sentiment_quick.toml"


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> Path:
    """The quick recipe (base, sft, reward) trained once; tests read it and must not modify it.

    While iterating, RLHF_LENS_TEST_RUN=runs/quick reuses a run trained by
    `rlhf-lens train training/sentiment_quick.toml --out runs/quick` (CI always trains afresh).
    """
    from tests.learning import train_quick

    if os.environ.get("RLHF_LENS_TEST_RUN") and not os.environ.get("CI"):
        return Path(os.environ["RLHF_LENS_TEST_RUN"]).absolute()
    return train_quick(tmp_path_factory.mktemp("shared") / "quick")


@pytest.fixture(scope="session")
def trigger_work(tmp_path_factory) -> Path:
    """One folder for the planted trigger reward model and its control (`learning.trigger_reward_runs`), trained once
    per session for the attribution, alignment and probe tests."""
    return tmp_path_factory.mktemp("trigger")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A small byte-level BPE trained on a few task texts."""
    from rlhf_lens.tasks import get_task
    from rlhf_lens.training.build import train_tokenizer

    texts = [r["text"] for r in get_task("sentiment").corpus(500, seed=0)]
    return train_tokenizer(texts, 400)


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_tokenizer):
    """A random 2-layer GPT-2 sized to the tiny tokenizer, in eval mode."""
    from rlhf_lens.training.build import build_model
    from rlhf_lens.training.config import ModelConfig

    model = build_model(ModelConfig(n_layer=2, d_model=32, n_head=4, context=64, vocab_size=400), tiny_tokenizer, seed=0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_scorer(tiny_gpt2, tmp_path_factory):
    """A sequence-classification reward model (num_labels=1) on the tiny GPT-2 backbone."""
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("scorer")
    tiny_gpt2.save_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    model.config.pad_token_id = tiny_gpt2.config.pad_token_id
    return model


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA (DESIGN.md): they skip, with the reason, where torch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="needs CUDA; torch sees no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)
