"""Losses and estimators of the trainer: pure functions of tensors, unit-tested by hand.

Shapes: batch, gen_len, k (completions per ranking).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected - margin), averaged over the batch: (batch,), (batch,) -> ().

    Bradley & Terry (1952); the margin variant is Llama 2's (Touvron et al. 2023, eq. 2).
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards - margin).mean()


def plackett_luce_loss(rewards: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of a full ranking under Plackett-Luce: (batch, k), (batch, k) -> ().

    `order[b]` lists indices into `rewards[b]`, best first. P(order) = prod_i
    exp(r_{o_i}) / sum_{j >= i} exp(r_{o_j}) (Plackett 1975; used for K-wise RMs
    in Zhu et al. 2023, "Principled RLHF from pairwise or K-wise comparisons").
    """
    ranked = torch.gather(rewards, 1, order)  # (batch, k), best first
    # log-sum-exp over the items still unranked at each position: a reversed cumulative logsumexp.
    tail_lse = torch.logcumsumexp(ranked.flip(-1), dim=-1).flip(-1)  # (batch, k)
    return -(ranked - tail_lse)[:, :-1].sum(-1).mean()


def rating_regression_loss(predicted: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
    """Mean squared error against ratings 1..5 mapped to [-1, 1]: (batch,), (batch,) -> ()."""
    return F.mse_loss(predicted, normalise_ratings(ratings))


def normalise_ratings(ratings: torch.Tensor) -> torch.Tensor:
    """Ratings 1..5 -> [-1, 1] (3 -> 0)."""
    return (ratings.float() - 3.0) / 2.0
