"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lens.training.losses import bradley_terry_loss, normalise_ratings, plackett_luce_loss, rating_regression_loss


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
