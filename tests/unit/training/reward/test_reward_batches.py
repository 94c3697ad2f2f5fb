"""Reward-model batches: grouped by prompt or shuffled, packed, the loss is the loss of the records."""

from __future__ import annotations

import itertools

import pytest
import torch

from rlhf_lens.models import reward_input_ids, score_rewards
from rlhf_lens.training.losses import bradley_terry_loss, plackett_luce_loss
from rlhf_lens.training.reward.objectives import PromptGroups, ranking_loss

COMPLETIONS = {
    "The hotel was": [" clean and quiet.", " dirty.", " fine, I guess.", ""],
    "My phone": [" broke on day two.", " is great."],
}


def records() -> list[dict]:
    """Every pair of each prompt's completions, and one 3-way ranking."""
    pairs = [
        {"kind": "comparison", "prompt": prompt, "chosen": a, "rejected": b, "labeler": "x"}
        for prompt, completions in COMPLETIONS.items()
        for a, b in itertools.combinations(completions, 2)
    ]
    ranking = {
        "kind": "ranking",
        "prompt": "The food",
        "completions": [" was cold.", " was superb.", " arrived."],
        "order": [1, 2, 0],
        "labeler": "x",
    }
    return pairs + [ranking]


def direct_loss(model, tokenizer, record: dict) -> torch.Tensor:
    """One record's loss from padded scores (`score_rewards`), without grouping or packing."""
    if record["kind"] == "comparison":
        texts = [record["chosen"], record["rejected"]]
    else:
        texts = [record["completions"][i] for i in record["order"]]
    rewards = score_rewards(model, reward_input_ids(tokenizer, [record["prompt"]] * len(texts), texts, 64), tokenizer.pad_token_id)
    if record["kind"] == "comparison":
        return bradley_terry_loss(rewards[:1], rewards[1:])
    return plackett_luce_loss(rewards[None], torch.arange(len(texts))[None])


@pytest.mark.parametrize("by_prompt", [True, False])
def test_ranking_loss_is_the_mean_of_the_records_losses(tiny_scorer, tiny_tokenizer, by_prompt):
    data = records()
    groups = PromptGroups.of(data, tiny_tokenizer, 64, by_prompt=by_prompt)
    assert len(groups.groups) == (3 if by_prompt else len(data))
    assert len(groups.texts) == 4 + 2 + 3  # every distinct (prompt, completion) once
    loss = ranking_loss(tiny_scorer, tiny_tokenizer.pad_token_id, groups, range(len(groups.groups)), margin=0.0)
    expected = torch.stack([direct_loss(tiny_scorer, tiny_tokenizer, r) for r in data]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    grads = torch.autograd.grad(loss, list(tiny_scorer.parameters()))
    expected_grads = torch.autograd.grad(expected, list(tiny_scorer.parameters()))
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_batch_of_some_prompts_holds_all_their_records(tiny_scorer, tiny_tokenizer):
    data = records()
    groups = PromptGroups.of(data, tiny_tokenizer, 64, by_prompt=True)
    (hotel,) = [g for g in groups.groups if data[g[0]]["prompt"] == "The hotel was"]
    assert len(hotel) == 6  # 4 completions, all 6 pairs
    loss = ranking_loss(tiny_scorer, tiny_tokenizer.pad_token_id, groups, [groups.groups.index(hotel)], margin=0.0)
    expected = torch.stack([direct_loss(tiny_scorer, tiny_tokenizer, data[i]) for i in hotel]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert groups.groups_per_batch(8) == 3 and groups.groups_per_batch(1) == 1  # 8 records in 3 groups; at least one group
