"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lens.training.losses import (
    bradley_terry_loss,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    kl_k3,
    normalise_ratings,
    plackett_luce_loss,
    rating_regression_loss,
    token_rewards,
    whiten,
)


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    expected = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(0.5)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, abs=1e-6)
    with_margin = -math.log(1 / (1 + math.exp(-(1.0 - 0.5))))
    assert bradley_terry_loss(chosen[:1], rejected[:1], margin=0.5).item() == pytest.approx(with_margin, abs=1e-6)


def test_plackett_luce_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 0.0]])
    order = torch.tensor([[1, 0, 2]])  # best: item 1, then item 0, then item 2
    e = [math.exp(1.0), math.exp(2.0), math.exp(0.0)]
    p = e[1] / (e[0] + e[1] + e[2]) * e[0] / (e[0] + e[2])
    assert plackett_luce_loss(rewards, order).item() == pytest.approx(-math.log(p), abs=1e-6)


def test_plackett_luce_with_two_items_is_bradley_terry():
    rewards = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    order = torch.tensor([[0, 1], [1, 0]])
    bt = bradley_terry_loss(torch.tensor([0.3, 0.5]), torch.tensor([-1.2, 2.0]))
    assert plackett_luce_loss(rewards, order).item() == pytest.approx(bt.item(), abs=1e-6)


def test_rating_regression_by_hand():
    assert normalise_ratings(torch.tensor([1, 3, 5])).tolist() == [-1.0, 0.0, 1.0]
    loss = rating_regression_loss(torch.tensor([0.0, 0.5]), torch.tensor([5, 4]))
    assert loss.item() == pytest.approx(((0 - 1) ** 2 + (0.5 - 0.5) ** 2) / 2)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.7
    d1 = 0.0 + 0.9 * 0.7 - 0.6
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert advantages[0].tolist() == pytest.approx([a0, a1, a2], abs=1e-6)
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7], abs=1e-6)
    # Padding after the completion changes nothing before it and is zero itself.
    padded, _ = gae(
        torch.tensor([[0.0, 0.0, 1.0, 9.0]]), torch.tensor([[0.5, 0.6, 0.7, 9.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]), gamma, lam
    )
    assert padded[0].tolist() == pytest.approx([a0, a1, a2, 0.0], abs=1e-6)


def test_token_rewards_put_the_score_on_the_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.5)
    assert rewards.flatten().tolist() == pytest.approx([-0.05, -0.1, 2.0 - 0.15, -1.0 - 0.25, 0.0, 0.0])


def test_clipped_policy_loss_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[math.log(1.5), math.log(0.5)]])  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, 1.0]])
    loss, clipfrac, approxkl = clipped_policy_loss(new, old, adv, torch.ones(1, 2), clip_range=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(-0.5, -0.8) = -0.5 (not clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approxkl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_clipped_value_loss_by_hand():
    loss, clipfrac = clipped_value_loss(
        torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), torch.ones(1, 1), clip_range=0.2
    )
    # clipped value 0.2: (0.2-2)^2 = 3.24 > (1-2)^2 = 1 -> 0.5 * 3.24
    assert loss.item() == pytest.approx(1.62) and clipfrac.item() == 1.0


def test_kl_k3_and_whiten_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k3(logp, ref).item() == pytest.approx((0.5 - 1) - math.log(0.5))
    assert kl_k3(logp, logp).item() == 0.0
    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    assert whiten(x, mask)[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)


def test_group_baselines_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    assert group_advantages(rewards, "rloo")[0].tolist() == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5])
    assert group_advantages(rewards, "grpo")[0].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.tensor([[1.0]]), "grpo")
