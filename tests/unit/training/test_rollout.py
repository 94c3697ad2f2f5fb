"""Rollouts: empty completions are scored and logged like any other; rows carry the DESIGN columns."""

from __future__ import annotations

import math

import numpy as np

from rlhf_lens.models import Samples
from rlhf_lens.training import rollout as rollout_module
from rlhf_lens.training.policy_reward import RewardSource
from rlhf_lens.training.rollout import collect_rollout, rollout_rows


def test_empty_completions_are_scored_and_logged(tiny_gpt2, tiny_tokenizer, monkeypatch):
    eos = tiny_tokenizer.eos_token_id

    def only_eos(model, tokenizer, prompt_ids, seeds, **kwargs):
        # Row 0 stops at once (EOS only), row 1 returns nothing at all; both decode to "".
        return Samples(prompt_ids=[list(p) for p in prompt_ids], completion_ids=[[eos], []], finished=[True, False], texts=["", ""])

    monkeypatch.setattr(rollout_module, "sample", only_eos)
    seen = []

    def reward(prompts, completions):
        seen.extend(completions)
        return np.array([0.5 for _ in prompts])

    prompts = [{"index": 0, "id": "p0", "prompt": "The screen is"}]
    rollout = collect_rollout(tiny_gpt2, tiny_gpt2, tiny_tokenizer, RewardSource("const", reward), None, prompts, group_size=2, seed=0, step=1,
                              max_new_tokens=8, temperature=1.0, reward_scale=1.0, eos_penalty=1.0)
    assert seen == ["", ""]
    assert rollout.lengths.tolist() == [1.0, 1.0]  # an empty completion is scored as the EOS token
    assert all(math.isfinite(x) for x in rollout.logprobs.sum(-1).tolist())
    assert rollout.rewards.tolist() == [0.5, -0.5]  # the unfinished one pays the missing-EOS penalty
    rows = rollout_rows(rollout, stage="policy", step=1)
    assert [r["completion"] for r in rows] == ["", ""] and [r["finished"] for r in rows] == [True, False]
    assert [len(r["logprobs"]) for r in rows] == [1, 1] and rows[0]["gold_reward"] is None
