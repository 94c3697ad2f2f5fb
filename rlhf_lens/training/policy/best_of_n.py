"""Best-of-n: keep the completion the reward model scores highest among n samples of the starting
policy. No training; each n is logged as a step with the analytic KL log n - (n-1)/n, so reward
over-optimisation can be studied against KL without an optimiser in the way (Gao et al. 2023)."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from rlhf_lens.training.losses import best_of_n_kl
from rlhf_lens.training.policy.rollout import Rollout, collect_rollout, rollout_rows
from rlhf_lens.training.policy.setup import PolicySetup

SAMPLE_BATCH = 16  # prompts per sampling call


def best_indices(rewards: np.ndarray, n: int) -> np.ndarray:
    """Per prompt, the index of the highest reward among its first n samples: (prompts, n_max) -> (prompts,)."""
    return rewards[:, :n].argmax(axis=1)


def select(rollout: Rollout, rows: list[int]) -> Rollout:
    """The rollout restricted to some rows."""

    def pick(x):
        return x[rows] if isinstance(x, torch.Tensor) else [x[i] for i in rows]

    return Rollout(**{f: (pick(v) if v is not None else None) for f, v in vars(rollout).items()})


def concat(rollouts: list[Rollout]) -> Rollout:
    first = rollouts[0]
    out = {}
    for field, value in vars(first).items():
        if value is None:
            out[field] = None
        elif isinstance(value, torch.Tensor):
            out[field] = torch.cat([getattr(r, field) for r in rollouts])
        else:
            out[field] = [x for r in rollouts for x in getattr(r, field)]
    return Rollout(**out)


def run_best_of_n(stage, setup: PolicySetup, writer, *, seed: int, quiet: bool) -> dict:
    """Sample max(best_of) completions per eval prompt once, then log best-of-n for each n; save the policy as `final`."""
    n_max = max(stage.best_of)
    everything = sample_candidates(stage, setup, n_max, seed=seed, quiet=quiet)
    rewards = everything.rewards.view(-1, n_max).cpu().numpy()  # (prompt, n_max)
    if not np.isfinite(rewards).all():
        raise FloatingPointError(
            f"stage {stage.name}: the reward ({setup.reward.name}) gave {int((~np.isfinite(rewards)).sum())} non-finite rewards; best-of-n cannot rank them"
        )
    results = {}
    for n in sorted(set(stage.best_of)):
        best = select(everything, [p * n_max + int(j) for p, j in enumerate(best_indices(rewards, n))])
        metrics = best_of_n_metrics(best, n)
        writer.log_metrics(stage.name, n, metrics)
        rows_out = rollout_rows(best, stage=stage.name, step=n)
        for row in rows_out:  # the best-of-n distribution's KL is analytic; per-token KL against the sampler is 0
            row["seq_kl"] = metrics["objective/kl"]
        writer.write_rollouts(stage.name, n, rows_out)
        results |= {
            f"best_of_{n}/{k}": metrics[k] for k in ("objective/kl", "objective/scores", "gold/mean", "eval/gold_sem") if k in metrics
        }
    writer.save_checkpoint(
        stage.name,
        "final",
        model=setup.policy,
        tokenizer=setup.tokenizer,
        step=0,
        metrics={},
        extra_meta={"algorithm": "best_of_n", "best_of": list(stage.best_of)},
    )
    return results | {"algorithm": "best_of_n"}


def sample_candidates(stage, setup: PolicySetup, n_max: int, *, seed: int, quiet: bool) -> Rollout:
    """n_max scored completions of each eval prompt, drawn once (prompt p's are rows p * n_max ...)."""
    prompts = setup.eval_prompts[: stage.eval_prompts]
    chunks = []
    for start in tqdm(range(0, len(prompts), SAMPLE_BATCH), desc=f"{stage.name} (best-of-{n_max} sampling)", disable=quiet):
        chunks.append(
            collect_rollout(
                setup.policy,
                setup.reference,
                setup.tokenizer,
                setup.reward,
                setup.gold_fn,
                prompts[start : start + SAMPLE_BATCH],
                group_size=n_max,
                seed=seed,
                step=0,
                max_new_tokens=stage.max_new_tokens,
                temperature=stage.temperature,
                reward_scale=1.0,
                eos_penalty=stage.missing_eos_penalty,
            )
        )
    return concat(chunks)


def best_of_n_metrics(best: Rollout, n: int) -> dict[str, float]:
    """The best-of-n completions' statistics under the online stages' keys, with the analytic KL."""
    metrics = {
        "objective/kl": best_of_n_kl(n),
        "objective/scores": float(best.scores.mean()),
        "objective/rlhf_reward": float(best.rewards.mean()),
        "completions/mean_length": float(best.lengths.mean()),
        "completions/finished_rate": float(best.finished.float().mean()),
        "n": n,
    }
    if best.gold is not None:
        metrics |= {
            "gold/mean": float(best.gold.mean()),
            "gold/std": float(best.gold.std()),
            "eval/gold_sem": float(best.gold.std() / math.sqrt(len(best))),
        }
    return metrics
