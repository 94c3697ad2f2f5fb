"""Losses and estimators of the trainer: pure functions of tensors, unit-tested by hand.

Shapes: batch, gen_len, k (completions per ranking).
"""

from __future__ import annotations

import math

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


# --------------------------------------------------------------------------- policy optimisation
# Shapes: batch, gen_len; `mask` is 1 on completion tokens, 0 on padding.


def masked_mean(x: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean of x over mask == 1; `count` replaces mask.sum() (e.g. the token count of all processes)."""
    return (x * mask).sum() / (mask.sum().clamp(min=1) if count is None else count)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise to unit variance (and zero mean) over masked entries (lm-human-preferences `whiten`)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * mask


def sequence_token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's mean over its own tokens: (batch, gen_len) -> (batch,); 0 for an empty completion.

    GRPO's loss averages per-token terms this way before averaging over sequences (Shao et al. 2024, eq. 3).
    """
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(p || ref) per token: (r - 1) - log r with r = ref/p; unbiased and >= 0.

    J. Schulman, "Approximating KL divergence" (2020); the estimator GRPO uses (Shao et al. 2024, eq. 4).
    """
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def token_rewards(seq_rewards: torch.Tensor, kl_per_token: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: -beta * KL on every token, plus the sequence reward on the last token.

    (batch,), (batch, gen_len) -> (batch, gen_len); Ziegler et al. 2019, eq. 2.
    """
    rewards = -beta * kl_per_token * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)  # (batch,)
    return rewards.scatter_add(1, last[:, None], seq_rewards[:, None].to(rewards.dtype))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): -> advantages, returns (batch, gen_len).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; V after the last
    completion token is 0.
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        live = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * live
        next_value = torch.where(live.bool(), values[:, t], next_value)
        next_advantage = torch.where(live.bool(), advantage, next_advantage)
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7): -> loss, clip fraction, approx KL (0.5 * log-ratio^2).

    Means over mask, or sums divided by `count` (the token count of every process under DDP)."""
    per_token, was_clipped = clipped_surrogate(logprobs, old_logprobs, advantages, clip_range)
    loss = masked_mean(per_token, mask, count)
    clipfrac = masked_mean(was_clipped, mask, count)
    approxkl = masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask, count)
    return loss, clipfrac, approxkl


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO surrogate loss max(-A r, -A clip(r, 1-eps, 1+eps)) and where the clip bound (1.0/0.0).

    All (batch, gen_len); `advantages` may be (batch, 1) for sequence-level advantages (GRPO, RLOO).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO value loss with the value clipped around the rollout's values: -> loss, clip fraction."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask, count)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).float(), mask, count)
    return loss, clipfrac


def group_advantages(rewards: torch.Tensor, method: str, eps: float = 1e-4) -> torch.Tensor:
    """Critic-free advantages from groups of completions of one prompt: (groups, k) -> (groups, k).

    grpo: (r - mean) / (std + eps) over the group (Shao et al. 2024, sec. 4.1.2);
    rloo: r - mean of the other k-1 rewards (Ahmadian et al. 2024, eq. 7).
    """
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"a group baseline needs at least 2 completions per prompt, got {k}")
    mean = rewards.mean(dim=1, keepdim=True)
    if method == "grpo":
        return (rewards - mean) / (rewards.std(dim=1, keepdim=True) + eps)
    if method == "rloo":
        return (rewards - mean) * k / (k - 1)
    raise ValueError(f"method must be grpo or rloo, got {method!r}")


def dpo_loss(
    logps_chosen: torch.Tensor, logps_rejected: torch.Tensor, ref_logps_chosen: torch.Tensor, ref_logps_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference optimisation (Rafailov et al. 2023, eq. 7): (batch,) x 4 -> loss, chosen and rejected implicit rewards.

    The implicit reward of a completion is beta * (log pi(y|x) - log pi_ref(y|x)).
    """
    rewards_chosen = beta * (logps_chosen - ref_logps_chosen)
    rewards_rejected = beta * (logps_rejected - ref_logps_rejected)
    return -F.logsigmoid(rewards_chosen - rewards_rejected).mean(), rewards_chosen.detach(), rewards_rejected.detach()


def adaptive_kl_coef(kl_coef: float, seq_kl: float, n_samples: int, target: float, horizon: int) -> float:
    """One update of the adaptive KL controller (Ziegler et al. 2019, sec. 2.2):
    beta <- beta * (1 + clip((KL - target) / target, -0.2, 0.2) * n / horizon)."""
    error = min(max((seq_kl - target) / target, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_samples / horizon)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax at each position: (..., vocab) -> (...)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def best_of_n_kl(n: int) -> float:
    """Analytic KL(best-of-n || policy) = log n - (n - 1) / n (Stiennon et al. 2020, app. G.3; an upper bound, exact without ties)."""
    return math.log(n) - (n - 1) / n
