"""Evaluation of a policy on the eval prompts: proxy and gold reward, KL to the reference, lengths."""

from __future__ import annotations

import math

import torch

from rlhf_lens.training.policy.rollout import collect_rollout
from rlhf_lens.training.policy.setup import PolicySetup

EVAL_STEP = -1  # the sampling "step" of evaluation samples: the same seeds at every evaluation


@torch.no_grad()
def evaluate_policy(setup: PolicySetup, stage, seed: int) -> dict[str, float]:
    """Proxy and gold reward and KL of one sample per eval prompt (same seeds every time, so evaluations compare)."""
    prompts = setup.eval_prompts[: stage.eval_prompts]
    rollout = collect_rollout(
        setup.policy,
        setup.reference,
        setup.tokenizer,
        setup.reward,
        setup.gold_fn,
        prompts,
        group_size=1,
        seed=seed,
        step=EVAL_STEP,
        max_new_tokens=stage.max_new_tokens,
        temperature=stage.temperature,
        reward_scale=1.0,
        eos_penalty=0.0,
    )
    n = len(rollout)
    metrics = {
        "eval/kl": float(rollout.seq_kl.mean()),
        "eval/mean_length": float(rollout.lengths.mean()),
        "eval/finished_rate": float(rollout.finished.float().mean()),
    }
    if setup.reward is not None:
        metrics["eval/score_mean"] = float(rollout.scores.mean())
    if rollout.gold is not None:
        metrics |= {"eval/gold_mean": float(rollout.gold.mean()), "eval/gold_sem": float(rollout.gold.std() / math.sqrt(n))}
    return metrics
