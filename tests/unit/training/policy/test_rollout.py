"""Rollouts: empty completions are scored and logged like any other; rows carry the DESIGN columns."""

from __future__ import annotations

import math

import numpy as np

from rlhf_lens.models import Samples
from rlhf_lens.training.policy import rollout as rollout_module
from rlhf_lens.training.policy.reward_source import RewardSource
from rlhf_lens.training.policy.rollout import collect_rollout, rollout_rows


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
    rollout = collect_rollout(
        tiny_gpt2,
        tiny_gpt2,
        tiny_tokenizer,
        RewardSource("const", reward),
        None,
        prompts,
        group_size=2,
        seed=0,
        step=1,
        max_new_tokens=8,
        temperature=1.0,
        reward_scale=1.0,
        eos_penalty=1.0,
    )
    assert seen == ["", ""]
    assert rollout.lengths.tolist() == [1.0, 1.0]  # an empty completion is scored as the EOS token
    assert all(math.isfinite(x) for x in rollout.logprobs.sum(-1).tolist())
    assert rollout.rewards.tolist() == [0.5, -0.5]  # the unfinished one pays the missing-EOS penalty
    rows = rollout_rows(rollout, stage="policy", step=1)
    assert [r["completion"] for r in rows] == ["", ""] and [r["finished"] for r in rows] == [True, False]
    assert [len(r["logprobs"]) for r in rows] == [1, 1] and rows[0]["gold_reward"] is None


def test_evaluation_logprobs_are_a_full_pass_at_the_sampling_temperature_so_kl_to_itself_is_zero(tiny_gpt2, tiny_tokenizer):
    import torch

    from rlhf_lens.models import completion_logits

    prompts = [{"index": 0, "id": "p0", "prompt": "The screen is"}, {"index": 1, "id": "p1", "prompt": "The battery"}]
    rollout = collect_rollout(
        tiny_gpt2,
        tiny_gpt2,
        tiny_tokenizer,
        None,
        None,
        prompts,
        group_size=2,
        seed=0,
        step=1,
        max_new_tokens=6,
        temperature=0.5,
        reward_scale=1.0,
        eos_penalty=0.0,
        sampler_logprobs=False,
    )
    with torch.no_grad():
        logits, targets, mask = completion_logits(tiny_gpt2, rollout.prompt_ids, rollout.completion_ids, tiny_tokenizer.pad_token_id)
    expected = torch.log_softmax(logits / 0.5, dim=-1).gather(-1, targets[:, :, None]).squeeze(-1) * mask
    width = expected.shape[1]
    assert torch.allclose(rollout.logprobs[:, :width], expected, atol=1e-5)
    assert torch.equal(rollout.kl_per_token, torch.zeros_like(rollout.kl_per_token))  # policy == reference


def test_token_values_are_the_score_head_at_the_position_before_each_token(tiny_gpt2, tiny_tokenizer):
    import torch
    from transformers import GPT2ForSequenceClassification

    from rlhf_lens.models import TokenValues, completion_values

    torch.manual_seed(0)
    scorer = GPT2ForSequenceClassification(tiny_gpt2.config.__class__(**{**tiny_gpt2.config.to_dict(), "num_labels": 1})).eval()
    values = TokenValues(scorer)
    prompts, completions = [[1, 5, 9], [1, 7]], [[11, 12], [13, 14, 15]]
    got = completion_values(values, prompts, completions, tiny_tokenizer.pad_token_id)  # (2, 3)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = torch.tensor([p + c])
        with torch.no_grad():
            hidden = scorer.transformer(input_ids=ids).last_hidden_state
            direct = scorer.score(hidden)[0, :, 0]  # (seq,)
        for j in range(len(c)):
            assert abs(got[i, j].item() - direct[len(p) - 1 + j].item()) < 1e-5  # V(state before token j)
        assert got[i, len(c) :].abs().sum().item() == 0.0  # padding holds 0


def test_dpo_pairs_longer_than_the_context_keep_completions_and_the_end_of_the_prompt(tiny_tokenizer):
    import pytest

    from rlhf_lens.training.policy.dpo import Pairs

    record = {"prompt": "The screen is bright and the keyboard is quiet and " * 6, "chosen": "great.", "rejected": "awful, truly awful."}
    with pytest.warns(UserWarning, match="1 of 1 preference pairs are longer than the policy's context of 24"):
        pairs = Pairs.of([record], tiny_tokenizer, 24)
    assert len(pairs.prompt_ids[0]) + max(len(pairs.chosen_ids[0]), len(pairs.rejected_ids[0])) == 24
    assert pairs.chosen_ids[0][-1] == pairs.rejected_ids[0][-1] == tiny_tokenizer.eos_token_id  # completions intact
    full = Pairs.of([record], tiny_tokenizer, 10**6)
    assert pairs.prompt_ids[0] == full.prompt_ids[0][-len(pairs.prompt_ids[0]) :]  # the prompt's last tokens


def test_the_rollout_keeps_the_samplers_logprobs_and_runs_no_second_policy_pass(tiny_gpt2, tiny_tokenizer, monkeypatch):
    """Old log-probs come from the sampler: the first update's ratio exp(new - old) is 1 to 1e-5, the entropy is the
    sampling distribution's, and only the reference gets a full forward pass."""
    import copy

    import torch

    from rlhf_lens.training.policy.rollout import minibatch_logprobs, token_logprobs

    reference = copy.deepcopy(tiny_gpt2)
    scored = []

    def counting(model, *args, **kwargs):
        scored.append(model)
        return token_logprobs(model, *args, **kwargs)

    monkeypatch.setattr(rollout_module, "token_logprobs", counting)
    prompts = [{"index": i, "id": f"p{i}", "prompt": p} for i, p in enumerate(["The screen is", "The battery", "We ate here and"])]
    rollout = collect_rollout(
        tiny_gpt2,
        reference,
        tiny_tokenizer,
        None,
        None,
        prompts,
        group_size=3,
        seed=0,
        step=1,
        max_new_tokens=7,
        temperature=0.8,
        reward_scale=1.0,
        eos_penalty=0.0,
    )
    assert scored == [reference]
    with torch.no_grad():
        new = minibatch_logprobs(tiny_gpt2, rollout, list(range(len(rollout))), tiny_tokenizer.pad_token_id, temperature=0.8)
        _, entropy = token_logprobs(
            tiny_gpt2, rollout.prompt_ids, rollout.completion_ids, tiny_tokenizer.pad_token_id, 7, with_entropy=True, temperature=0.8
        )
    ratio = torch.exp(new - rollout.logprobs) * rollout.completion_mask + (1 - rollout.completion_mask)
    assert (ratio - 1).abs().max().item() < 1e-5
    assert torch.allclose(rollout.entropy, entropy, atol=1e-5)
    assert torch.equal(rollout.logprobs * (1 - rollout.completion_mask), torch.zeros_like(rollout.logprobs))
