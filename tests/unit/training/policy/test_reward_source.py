"""A reward checkpoint used as a policy's reward reads as its reward stage read it."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf_lens.models import judge_texts
from rlhf_lens.training.policy.reward_source import reward_model_source

PROMPTS = ["The soup", "My new chair"]
COMPLETIONS = [" was fine.", " broke after a week."]


def generative_checkpoint(folder, model, tokenizer, meta: dict):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "meta.json").write_text(json.dumps({"stage": "reward", "kind": "reward", "step": 1, "tag": "final", **meta}))
    return folder


def test_a_generative_reward_writes_critiques_of_the_length_its_stage_used(tiny_gpt2, tiny_tokenizer, tmp_path):
    folder = generative_checkpoint(
        tmp_path, tiny_gpt2, tiny_tokenizer, {"reward_kind": "generative", "critique_first": True, "critique_max_tokens": 3}
    )
    source = reward_model_source(folder, torch.device("cpu"))
    rewards = source.score(PROMPTS, COMPLETIONS)
    expected = [
        judge_texts(tiny_gpt2, tiny_tokenizer, PROMPTS, COMPLETIONS, critique_first=True, critique_max_tokens=n).numpy() for n in (3, 40)
    ]
    assert rewards == pytest.approx(expected[0], abs=1e-5)
    assert not rewards == pytest.approx(expected[1], abs=1e-5)  # a random model's critiques run on: the length matters


def test_a_checkpoint_without_the_critique_length_warns_and_uses_the_default(tiny_gpt2, tiny_tokenizer, tmp_path):
    folder = generative_checkpoint(tmp_path, tiny_gpt2, tiny_tokenizer, {"reward_kind": "generative", "critique_first": True})
    with pytest.warns(UserWarning, match="does not record critique_max_tokens.*default 40"):
        source = reward_model_source(folder, torch.device("cpu"))
    expected = judge_texts(tiny_gpt2, tiny_tokenizer, PROMPTS, COMPLETIONS, critique_first=True, critique_max_tokens=40).numpy()
    assert source.score(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)
