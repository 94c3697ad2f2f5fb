"""One PPO update on a batch of rollouts (lm-human-preferences / "N implementation details of RLHF with PPO").

Per-token rewards are -beta * KL on every token plus the sequence reward on the
last one; GAE against the value model's per-token values; advantages whitened
over the global batch; then `epochs` passes of clipped policy and value losses
over minibatches of whole prompts.
"""

from __future__ import annotations

import torch

from rlhf_lens.packing import packed_completion_values
from rlhf_lens.training.distributed import World, whiten_global
from rlhf_lens.training.losses import clipped_policy_loss, clipped_value_loss, gae, token_rewards
from rlhf_lens.training.policy.rollout import Rollout, minibatch_logprobs
from rlhf_lens.training.policy.update import UpdateStats, apply_gradients, epoch_seed, minibatch_rows


@torch.no_grad()
def rollout_values(value_model, rollout: Rollout, pad_id: int) -> torch.Tensor:
    values = packed_completion_values(value_model, rollout.prompt_ids, rollout.completion_ids, pad_id)  # (batch, L)
    return torch.nn.functional.pad(values, (0, rollout.logprobs.shape[1] - values.shape[1]))  # (batch, gen_len)


def ppo_update(
    policy, value_model, optimizer, rollout: Rollout, cfg, *, kl_coef: float, pad_id: int, world: World, seed: int, step: int
) -> tuple[dict, bool]:
    """Train policy and value model on one rollout; -> (metrics, whether every minibatch step was applied).

    Minibatches are drawn afresh each epoch from (seed, step, epoch)."""
    mask = rollout.completion_mask  # (batch, gen_len)
    old_values = rollout_values(value_model, rollout, pad_id)
    rewards = token_rewards(rollout.rewards, rollout.kl_per_token, mask, kl_coef)  # (batch, gen_len)
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten_global(advantages, mask, world)
    stats = UpdateStats(world)
    for epoch in range(cfg.epochs):
        draw = epoch_seed(seed, step, epoch)
        for rows in minibatch_rows(len(rollout) // cfg.group_size, cfg.group_size, cfg.minibatches, seed=draw, rank=world.rank):
            mb = lambda x, rows=rows: x[rows]  # noqa: E731 - this minibatch's rows of a (batch, ...) tensor
            count = world.sum(mask[rows].sum())  # completion tokens of this minibatch over every process
            logprobs = minibatch_logprobs(policy, rollout, rows, pad_id, temperature=cfg.temperature)  # (mb, gen_len)
            values = packed_completion_values(
                value_model, [rollout.prompt_ids[i] for i in rows], [rollout.completion_ids[i] for i in rows], pad_id
            )
            values = torch.nn.functional.pad(values, (0, mask.shape[1] - values.shape[1]))
            pg_loss, clipfrac, approxkl = clipped_policy_loss(
                logprobs, mb(rollout.logprobs), mb(advantages), mb(mask), cfg.clip_range, count
            )
            vf_loss, vf_clipfrac = clipped_value_loss(values, mb(old_values), mb(returns), mb(mask), cfg.value_clip_range, count)
            loss = pg_loss + cfg.vf_coef * vf_loss
            ratio = (torch.exp(logprobs - mb(rollout.logprobs)) * mb(mask)).sum() / count
            applied = apply_gradients(loss * world.size, optimizer, cfg.grad_clip, world)  # DDP averages gradients over processes
            stats.add(
                {
                    "policy/approxkl_avg": approxkl,
                    "policy/clipfrac_avg": clipfrac,
                    "loss/policy_avg": pg_loss,
                    "loss/value_avg": vf_loss,
                    "val/clipfrac_avg": vf_clipfrac,
                    "val/ratio": ratio,
                },
                applied,
            )
    return stats.means(), stats.all_applied
