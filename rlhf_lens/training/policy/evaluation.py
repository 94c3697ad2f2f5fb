"""Evaluation of a policy on the eval prompts: proxy and gold reward, KL to the reference, lengths.

Each evaluation's samples are logged as an eval rollout shard, so the analyses can compare the starting policy
(step 0) with any later one on the same prompts and seeds.
"""

from __future__ import annotations

import math

import torch

from rlhf_lens.training.policy.rollout import Rollout, collect_rollout, rollout_rows
from rlhf_lens.training.policy.setup import PolicySetup

EVAL_STEP = -1  # the sampling "step" of evaluation samples: the same seeds at every evaluation


@torch.no_grad()
def evaluate_policy(setup: PolicySetup, stage, seed: int, writer, step: int) -> dict[str, float]:
    """Proxy and gold reward and KL of one sample per eval prompt (same seeds every time, so evaluations compare);
    the samples are written as the eval rollout shard of `step` (0: the starting policy)."""
    rollout = evaluation_rollout(setup, stage, seed)
    writer.write_eval_rollouts(stage.name, step, rollout_rows(rollout, stage=stage.name, step=step))
    return evaluation_metrics(rollout, has_reward=setup.reward is not None)


def evaluation_rollout(setup: PolicySetup, stage, seed: int) -> Rollout:
    """One sample per eval prompt, drawn with the evaluation seeds."""
    return collect_rollout(
        setup.policy,
        setup.reference,
        setup.tokenizer,
        setup.reward,
        setup.gold_fn,
        setup.eval_prompts[: stage.eval_prompts],
        group_size=1,
        seed=seed,
        step=EVAL_STEP,
        max_new_tokens=stage.max_new_tokens,
        temperature=stage.temperature,
        reward_scale=1.0,
        eos_penalty=0.0,
        sampler_logprobs=False,  # an evaluation makes no update; its KL to an identical reference is exactly 0
    )


def evaluation_metrics(rollout: Rollout, *, has_reward: bool) -> dict[str, float]:
    """The eval/ metrics of an evaluation rollout."""
    n = len(rollout)
    metrics = {
        "eval/kl": float(rollout.seq_kl.mean()),
        "eval/mean_length": float(rollout.lengths.mean()),
        "eval/finished_rate": float(rollout.finished.float().mean()),
    }
    if has_reward:
        metrics["eval/score_mean"] = float(rollout.scores.mean())
    if rollout.gold is not None:
        metrics |= {"eval/gold_mean": float(rollout.gold.mean()), "eval/gold_sem": float(rollout.gold.std() / math.sqrt(n))}
    return metrics
