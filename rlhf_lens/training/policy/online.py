"""The online policy stage (PPO, GRPO, RLOO), top to bottom like CleanRL's ppo.py.

Each step: pick the step's prompts (a function of seed and step), sample and
score rollouts, update, log the DESIGN.md metrics, and every `log_every` steps
write a rollout shard. Checkpoints every `save_every` steps carry optimizer,
scheduler, RNG, KL coefficient and reward scale, so a resumed run continues
exactly.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from rlhf_lens.models import TokenValues, context_length, encode_prompts, load_tokenizer, sample
from rlhf_lens.runs import checkpoint_tag, load_hf_folder
from rlhf_lens.training.data import batch_indices
from rlhf_lens.training.policy.group import group_update
from rlhf_lens.training.losses import adaptive_kl_coef
from rlhf_lens.training.optim import BadStepCounter, make_multi_optimizer, restore_training_state, training_state
from rlhf_lens.training.policy.setup import PolicySetup
from rlhf_lens.training.policy.evaluation import evaluate_policy
from rlhf_lens.training.policy.ppo import ppo_update
from rlhf_lens.training.policy.rollout import Rollout, collect_rollout, gather_rollout, rollout_rows, sample_seed

SCALE_STEP = -2  # the sampling "step" of the samples that measure the reward scale
KL_NEGATIVE_STEPS = 5  # flag a mean sequence KL below -KL_NEGATIVE_TOLERANCE for this many steps in a row
KL_NEGATIVE_TOLERANCE = 0.05
KL_BLOWUP_PER_TOKEN = 1.0  # flag a mean KL above this many nats per completion token


@torch.no_grad()
def measure_reward_scale(setup: PolicySetup, stage, seed: int) -> float:
    """1 / std of the reward model's scores on the starting policy's samples (lm-human-preferences' reward normalisation)."""
    prompts = setup.train_prompts[: max(stage.eval_prompts, 32)]
    seeds = [sample_seed(seed, SCALE_STEP, p["index"], 0) for p in prompts]
    texts = sample(setup.policy, setup.tokenizer, encode_prompts(setup.tokenizer, [p["prompt"] for p in prompts]), seeds,
                   max_new_tokens=stage.max_new_tokens, temperature=stage.temperature).texts
    scores = setup.reward.score([p["prompt"] for p in prompts], texts)
    std = float(np.std(scores[np.isfinite(scores)])) if np.isfinite(scores).any() else float("nan")
    return 1.0 / std if std > 1e-6 and math.isfinite(std) else 1.0


def step_metrics(rollout: Rollout, algorithm: str, kl_coef: float, world) -> dict[str, float]:
    """The step's rollout statistics under the DESIGN.md keys (PPO/RLOO: objective/*, GRPO: reward, kl, ...)."""
    n = world.sum(torch.tensor(float(len(rollout)), device=rollout.scores.device))
    mask = rollout.completion_mask

    def mean(x):
        return float(world.sum(x.sum()) / n)

    seq_kl, scores = mean(rollout.seq_kl), mean(rollout.scores)
    entropy = float(world.sum((rollout.entropy * mask).sum()) / world.sum(mask.sum()).clamp(min=1))
    rewards = rollout.rewards
    reward_mean = mean(rewards)
    reward_std = math.sqrt(max(mean(rewards**2) - reward_mean**2, 0.0))
    if algorithm == "grpo":
        metrics = {"reward": reward_mean, "reward_std": reward_std, "kl": seq_kl, "entropy": entropy}
    else:
        metrics = {"objective/kl": seq_kl, "objective/scores": scores, "objective/rlhf_reward": reward_mean - kl_coef * seq_kl,
                   "objective/entropy": entropy, "reward_std": reward_std}
    metrics["completions/mean_length"] = mean(rollout.lengths)
    metrics["completions/finished_rate"] = mean(rollout.finished.float())
    metrics["kl_coef"] = kl_coef
    if rollout.gold is not None:
        gold_mean = mean(rollout.gold)
        metrics["gold/mean"] = gold_mean
        metrics["gold/std"] = math.sqrt(max(mean(rollout.gold**2) - gold_mean**2, 0.0))
    return metrics


def run_online(stage, setup: PolicySetup, writer, *, seed: int, quiet: bool, resume: dict | None) -> dict:
    """Train with PPO, GRPO or RLOO; save `final`; return the stage's results for run.json."""
    world, tokenizer, pad_id = setup.world, setup.tokenizer, setup.tokenizer.pad_token_id
    policy, value_model = setup.policy, None
    models = [(policy, stage.lr)]
    if stage.algorithm == "ppo":
        source = setup.resume_folder / "value" if setup.resume_folder is not None else value_model_start(setup)
        value_model = TokenValues(load_hf_folder(source, "score", num_labels=1)).to(setup.device)
        models.append((value_model, stage.value_lr))
    optimizer, scheduler = make_multi_optimizer(models, stage.weight_decay, stage.warmup_steps, stage.steps)
    train_policy = DistributedDataParallel(policy) if world.distributed else policy
    train_value = DistributedDataParallel(value_model) if world.distributed and value_model is not None else value_model

    results: dict = {}
    if resume is not None:
        start = restore_training_state(resume["state"], optimizer, scheduler)
        extra = resume["state"]["extra"]
        kl_coef, reward_scale, results = extra["kl_coef"], extra["reward_scale"], dict(extra.get("start", {}))
    else:
        start, kl_coef = 0, stage.kl_coef
        reward_scale = measure_reward_scale(setup, stage, seed) if stage.normalize_reward and setup.reward_folder is not None else 1.0
        if world.is_main:
            results |= {f"start_{k}": v for k, v in evaluate_policy(setup, stage, seed).items()}
        world.barrier()
    bad = BadStepCounter.of(stage)
    negative_kl_run = 0
    if resume is not None:
        bad.consecutive, negative_kl_run = extra.get("bad_steps", 0), extra.get("negative_kl_run", 0)

    def resume_extra() -> dict:
        """What exact resume needs besides optimizer, scheduler and RNG (and the start-of-stage evaluation to report)."""
        return {"kl_coef": kl_coef, "reward_scale": reward_scale, "start": results, "bad_steps": bad.consecutive, "negative_kl_run": negative_kl_run}

    metrics: dict = {}
    bar = tqdm(range(start + 1, stage.steps + 1), desc=f"{stage.name} ({stage.algorithm})", disable=quiet or not world.is_main,
               initial=start, total=stage.steps)
    for step in bar:
        indices = batch_indices(len(setup.train_prompts), stage.batch_size, seed, step)
        prompts = world.shard([setup.train_prompts[i] for i in indices])
        with setup.autocast():
            rollout = collect_rollout(policy, setup.reference, tokenizer, setup.reward, setup.gold_fn, prompts,
                                      group_size=stage.group_size, seed=seed, step=step, max_new_tokens=stage.max_new_tokens,
                                      temperature=stage.temperature, reward_scale=reward_scale, eos_penalty=stage.missing_eos_penalty)
        learning_rate = scheduler.get_last_lr()[0]  # the rate this step trains with
        if float(world.sum((~torch.isfinite(rollout.scores)).float().sum())) > 0:
            update, applied, what = {}, False, "reward"  # no update; the step is still logged (NaN as null)
        else:
            with setup.autocast():
                if stage.algorithm == "ppo":
                    update, applied = ppo_update(train_policy, train_value, optimizer, rollout, stage, kl_coef=kl_coef, pad_id=pad_id, world=world)
                else:
                    update, applied = group_update(train_policy, optimizer, rollout, stage, kl_coef=kl_coef, pad_id=pad_id, world=world)
            what = "loss or gradient"
        scheduler.step()
        if applied:
            bad.ok()
        else:
            writer.log_event("nan_skip", stage=stage.name, step=step, what=what)

        metrics = step_metrics(rollout, stage.algorithm, kl_coef, world) | update | {"learning_rate": learning_rate}
        seq_kl = metrics.get("objective/kl", metrics.get("kl"))
        negative_kl_run = negative_kl_run + 1 if seq_kl < -KL_NEGATIVE_TOLERANCE else 0
        metrics["kl/negative_flag"] = float(negative_kl_run >= KL_NEGATIVE_STEPS)
        metrics["kl/blowup_flag"] = float(seq_kl / max(metrics["completions/mean_length"], 1.0) > KL_BLOWUP_PER_TOKEN)
        if metrics["kl/negative_flag"] or metrics["kl/blowup_flag"]:
            writer.log_event("kl_warning", stage=stage.name, step=step, kl=seq_kl,
                             what="persistent negative KL estimate" if metrics["kl/negative_flag"] else "KL blow-up")
        if stage.adaptive_kl and applied and math.isfinite(seq_kl):
            kl_coef = adaptive_kl_coef(kl_coef, seq_kl, stage.batch_size * stage.group_size, stage.kl_target, stage.kl_horizon)
        if (stage.eval_every and step % stage.eval_every == 0) or step == stage.steps:
            if world.is_main:
                metrics |= evaluate_policy(setup, stage, seed)
            world.barrier()
        writer.log_metrics(stage.name, step, metrics)
        if not applied:
            bad.bad(step, "rewards" if what == "reward" else "losses or gradients")  # raises after max_bad_steps in a row
        if (stage.log_every and step % stage.log_every == 0) or step == stage.steps:
            full = gather_rollout(rollout, world, tokenizer, setup.prompts_by_index, context_length(policy))
            writer.write_rollouts(stage.name, step, rollout_rows(full, stage=stage.name, step=step, first_sample_id=(step - 1) * stage.batch_size * stage.group_size))
        bar.set_postfix(reward=f"{metrics.get('reward', metrics.get('objective/scores', 0.0)):.3f}", kl=f"{seq_kl:.2f}")
        if stage.save_every and step % stage.save_every == 0 and step != stage.steps:
            save(writer, stage, checkpoint_tag(step), setup, value_model, step, metrics, optimizer, scheduler, resume_extra())
    save(writer, stage, "final", setup, value_model, stage.steps, metrics, optimizer, scheduler, resume_extra())
    final = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    return results | final | {"reward_scale": reward_scale, "kl_coef": kl_coef, "algorithm": stage.algorithm}


def save(writer, stage, tag, setup: PolicySetup, value_model, step, metrics, optimizer, scheduler, extra: dict) -> None:
    """A checkpoint with the value model and the training state (`extra`: see run_online's resume_extra)."""
    state = training_state(optimizer, scheduler, step, extra=extra)
    extra = {"algorithm": stage.algorithm, "reward_from": str(setup.reward_folder or "gold")}
    writer.save_checkpoint(stage.name, tag, model=setup.policy, tokenizer=setup.tokenizer, step=step, metrics=metrics, state=state,
                           value_model=value_model.model if value_model is not None else None, extra_meta=extra)


def value_model_start(setup: PolicySetup) -> Path:
    """TRL's choice: the value model starts as the reward model, when that reads the policy's tokens
    (same vocabulary, context at least the policy's); otherwise as the policy with a fresh head."""
    folder = setup.reward_folder
    if not is_score_model(folder):
        return setup.policy_folder
    config = json.loads((Path(folder) / "config.json").read_text())
    reward_context = config.get("n_positions") or config.get("max_position_embeddings") or 0
    if load_tokenizer(folder).get_vocab() == setup.tokenizer.get_vocab() and reward_context >= context_length(setup.policy):
        return folder
    warnings.warn(f"the reward model {folder} reads other tokens than the policy (tokenizer or context differ); the value model "
                  "starts from the policy with a fresh head instead", stacklevel=2)
    return setup.policy_folder


def is_score_model(folder) -> bool:
    """A reward checkpoint with a scalar head (a sensible initialisation of the value model)."""
    if folder is None:
        return False
    config = json.loads((Path(folder) / "config.json").read_text())
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures", []))
