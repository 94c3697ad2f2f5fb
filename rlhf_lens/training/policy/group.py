"""One critic-free update on a batch of rollouts: GRPO or RLOO.

Both sample `group_size` completions per prompt and use the group as the baseline:
- GRPO (Shao et al. 2024): advantage (r - mean) / std over the group; KL to the
  reference as a k3 penalty in the loss, weighted by beta;
- RLOO (Ahmadian et al. 2024): reward r - beta * seq KL (k1), advantage r minus
  the mean of the other k-1 rewards.
The per-token clipped surrogate is averaged over each completion's tokens, then
over all completions of the global batch.
"""

from __future__ import annotations

import torch

from rlhf_lens.training.distributed import World
from rlhf_lens.training.losses import clipped_surrogate, group_advantages, kl_k3, sequence_token_mean
from rlhf_lens.training.policy.rollout import Rollout, minibatch_logprobs
from rlhf_lens.training.policy.update import UpdateStats, apply_gradients, epoch_seed, minibatch_rows


def sequence_rewards(rollout: Rollout, algorithm: str, kl_coef: float) -> torch.Tensor:
    """(batch,) the reward the group baseline is taken over."""
    if algorithm == "rloo":
        return rollout.rewards - kl_coef * rollout.seq_kl
    return rollout.rewards


def group_update(
    policy, optimizer, rollout: Rollout, cfg, *, kl_coef: float, pad_id: int, world: World, seed: int, step: int
) -> tuple[dict, bool]:
    """Train the policy on one rollout; -> (metrics, whether every minibatch step was applied).

    Minibatches are drawn afresh each epoch from (seed, step, epoch)."""
    mask = rollout.completion_mask  # (batch, gen_len)
    rewards = sequence_rewards(rollout, cfg.algorithm, kl_coef)
    advantages = group_advantages(rewards.view(-1, cfg.group_size), cfg.algorithm).reshape(-1, 1)  # (batch, 1)
    stats = UpdateStats(world)
    for epoch in range(cfg.epochs):
        draw = epoch_seed(seed, step, epoch)
        for rows in minibatch_rows(len(rollout) // cfg.group_size, cfg.group_size, cfg.minibatches, seed=draw, rank=world.rank):
            n_sequences = world.sum(torch.tensor(float(len(rows)), device=mask.device))
            m = mask[rows]
            logprobs = minibatch_logprobs(policy, rollout, rows, pad_id, temperature=cfg.temperature)  # (mb, gen_len)
            per_token, was_clipped = clipped_surrogate(logprobs, rollout.logprobs[rows], advantages[rows], cfg.clip_range)
            if cfg.algorithm == "grpo" and kl_coef > 0:
                per_token = per_token + kl_coef * kl_k3(logprobs, rollout.ref_logprobs[rows])
            loss = sequence_token_mean(per_token, m).sum() / n_sequences
            clipped = sequence_token_mean(was_clipped.float(), m).sum() / n_sequences
            applied = apply_gradients(loss * world.size, optimizer, cfg.grad_clip, world)  # DDP averages gradients over processes
            stats.add({"loss/policy_avg": loss, "clip_ratio/region_mean": clipped}, applied)
    return stats.means(), stats.all_applied
