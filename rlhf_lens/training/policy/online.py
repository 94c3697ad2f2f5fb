"""The online policy stage (PPO, GRPO, RLOO), top to bottom like CleanRL's ppo.py.

`run_online` builds the models and optimizer, starts or resumes the loop state,
then each step: pick the step's prompts (a function of seed and step), sample and
score rollouts, update (or skip a step with a non-finite reward), log the DESIGN.md
metrics with the KL flags, adapt the KL coefficient, evaluate, and every
`log_every` steps write a rollout shard. Checkpoints every `save_every` steps carry
optimizer, scheduler, RNG, KL coefficient and reward scale, so a resumed run
continues exactly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from rlhf_lens.decoding import sample
from rlhf_lens.models import TokenValues, context_length, encode_prompts, load_tokenizer
from rlhf_lens.runs import checkpoint_tag, load_hf_folder, read_model_config, value_dir
from rlhf_lens.training.data import batch_indices
from rlhf_lens.training.losses import adaptive_kl_coef, kl_k3, sequence_token_mean
from rlhf_lens.training.optim import BadStepCounter, make_multi_optimizer, restore_training_state, training_state
from rlhf_lens.training.policy.evaluation import evaluate_policy
from rlhf_lens.training.policy.group import group_update
from rlhf_lens.training.policy.ppo import ppo_update
from rlhf_lens.training.policy.rollout import Rollout, collect_rollout, gather_rollout, rollout_rows, sample_seed
from rlhf_lens.training.policy.setup import PolicySetup
from rlhf_lens.training.steps import Cadence, progress

SCALE_STEP = -2  # the sampling "step" of the samples that measure the reward scale
KL_NEGATIVE_STEPS = 5  # flag a mean sequence KL below -KL_NEGATIVE_TOLERANCE for this many steps in a row
KL_NEGATIVE_TOLERANCE = 0.05
KL_BLOWUP_PER_TOKEN = 1.0  # flag a mean KL above this many nats per completion token


@torch.no_grad()
def measure_reward_scale(setup: PolicySetup, stage, seed: int) -> float:
    """1 / std of the reward model's scores on the starting policy's samples (lm-human-preferences' reward normalisation)."""
    prompts = setup.train_prompts[: max(stage.eval_prompts, 32)]
    seeds = [sample_seed(seed, SCALE_STEP, p["index"], 0) for p in prompts]
    texts = sample(
        setup.policy,
        setup.tokenizer,
        encode_prompts(setup.tokenizer, [p["prompt"] for p in prompts]),
        seeds,
        max_new_tokens=stage.max_new_tokens,
        temperature=stage.temperature,
    ).texts
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
        # `kl` is what GRPO's loss penalises (TRL's key): k3 per token, averaged per sequence, then over sequences;
        # `objective/kl` is the k1 sequence KL every algorithm logs, which the KL flags read.
        k3 = mean(sequence_token_mean(kl_k3(rollout.logprobs, rollout.ref_logprobs), mask))
        metrics = {"reward": reward_mean, "reward_std": reward_std, "kl": k3, "objective/kl": seq_kl, "entropy": entropy}
    else:
        metrics = {
            "objective/kl": seq_kl,
            "objective/scores": scores,
            "objective/rlhf_reward": reward_mean - kl_coef * seq_kl,
            "objective/entropy": entropy,
            "reward_std": reward_std,
        }
    metrics["completions/mean_length"] = mean(rollout.lengths)
    metrics["completions/finished_rate"] = mean(rollout.finished.float())
    metrics["kl_coef"] = kl_coef
    if rollout.gold is not None:
        gold_mean = mean(rollout.gold)
        metrics["gold/mean"] = gold_mean
        metrics["gold/std"] = math.sqrt(max(mean(rollout.gold**2) - gold_mean**2, 0.0))
    return metrics


@dataclass(frozen=True)
class OnlineModels:
    """What an online stage trains: the policy and (PPO) value model, as stored and as trained (DDP-wrapped
    under torchrun), and the one optimizer and schedule over both."""

    value_model: TokenValues | None
    train_policy: torch.nn.Module
    train_value: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object


@dataclass
class LoopState:
    """What an online stage carries from step to step besides the weights; exact resume restores all of it."""

    kl_coef: float
    reward_scale: float
    bad: BadStepCounter
    start: dict = field(default_factory=dict)
    """The start-of-stage evaluation (start_* keys), reported in run.json."""
    negative_kl_run: int = 0
    """Steps in a row with a mean sequence KL below -KL_NEGATIVE_TOLERANCE."""

    def resume_extra(self) -> dict:
        """What exact resume needs besides optimizer, scheduler and RNG (and the start-of-stage evaluation to report)."""
        return {
            "kl_coef": self.kl_coef,
            "reward_scale": self.reward_scale,
            "start": self.start,
            "bad_steps": self.bad.consecutive,
            "negative_kl_run": self.negative_kl_run,
        }


def run_online(stage, setup: PolicySetup, writer, *, seed: int, quiet: bool, resume: dict | None) -> dict:
    """Train with PPO, GRPO or RLOO; save `final`; return the stage's results for run.json."""
    models = build_models(stage, setup)
    start, state = start_or_resume(stage, setup, models, writer, seed, resume)
    cadence, world, metrics = Cadence.of(stage), setup.world, {}
    bar = progress(cadence, start, f"{stage.name} ({stage.algorithm})", quiet=quiet or not world.is_main)
    for step in bar:
        prompts = step_prompts(stage, setup, seed, step)
        with setup.autocast():
            rollout = collect_rollout(
                setup.policy,
                setup.reference,
                setup.tokenizer,
                setup.reward,
                setup.gold_fn,
                prompts,
                group_size=stage.group_size,
                seed=seed,
                step=step,
                max_new_tokens=stage.max_new_tokens,
                temperature=stage.temperature,
                reward_scale=state.reward_scale,
                eos_penalty=stage.missing_eos_penalty,
            )
        learning_rate = models.scheduler.get_last_lr()[0]  # the rate this step trains with
        update, applied, what = update_or_skip(stage, setup, models, rollout, state.kl_coef, seed=seed, step=step)
        models.scheduler.step()
        if applied:
            state.bad.ok()
        else:
            writer.log_event("nan_skip", stage=stage.name, step=step, what=what)
        metrics = step_metrics(rollout, stage.algorithm, state.kl_coef, world) | update | {"learning_rate": learning_rate}
        seq_kl = flag_kl(metrics, state, writer, stage.name, step)
        if stage.adaptive_kl and applied and math.isfinite(seq_kl):
            state.kl_coef = adaptive_kl_coef(state.kl_coef, seq_kl, stage.batch_size * stage.group_size, stage.kl_target, stage.kl_horizon)
        if cadence.is_eval_step(step):
            metrics |= evaluate_on_main(setup, stage, seed, writer, step)
        writer.log_metrics(stage.name, step, metrics)
        if not applied:
            state.bad.bad(step, "rewards" if what == "reward" else "losses or gradients")  # raises after max_bad_steps in a row
        if cadence.is_log_step(step):
            write_rollout_shard(writer, stage, setup, rollout, step)
        bar.set_postfix(reward=f"{metrics.get('reward', metrics.get('objective/scores', 0.0)):.3f}", kl=f"{seq_kl:.2f}")
        if cadence.is_save_step(step):
            save(writer, stage, checkpoint_tag(step), setup, models, step, metrics, state)
    save(writer, stage, "final", setup, models, stage.steps, metrics, state)
    final = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    return state.start | final | {"reward_scale": state.reward_scale, "kl_coef": state.kl_coef, "algorithm": stage.algorithm}


def build_models(stage, setup: PolicySetup) -> OnlineModels:
    """The value model (PPO: from the resumed checkpoint or `value_model_start`), one optimizer over both models, DDP wrappers."""
    world, value_model = setup.world, None
    models = [(setup.policy, stage.lr)]
    if stage.algorithm == "ppo":
        source = value_dir(setup.resume_folder) if setup.resume_folder is not None else value_model_start(setup)
        value_model = TokenValues(load_hf_folder(source, "score", num_labels=1)).to(setup.device)
        models.append((value_model, stage.value_lr))
    optimizer, scheduler = make_multi_optimizer(models, stage.weight_decay, stage.warmup_steps, stage.steps)
    train_policy = DistributedDataParallel(setup.policy) if world.distributed else setup.policy
    train_value = DistributedDataParallel(value_model) if world.distributed and value_model is not None else value_model
    return OnlineModels(value_model, train_policy, train_value, optimizer, scheduler)


def start_or_resume(stage, setup: PolicySetup, models: OnlineModels, writer, seed: int, resume: dict | None) -> tuple[int, LoopState]:
    """(the step to continue after, the loop state): restored from a resume checkpoint, or fresh: the stage's KL
    coefficient, the measured reward scale and the starting policy's evaluation."""
    bad = BadStepCounter.of(stage)
    if resume is not None:
        start = restore_training_state(resume["state"], models.optimizer, models.scheduler)
        extra = resume["state"]["extra"]
        bad.consecutive = extra.get("bad_steps", 0)
        return start, LoopState(extra["kl_coef"], extra["reward_scale"], bad, dict(extra.get("start", {})), extra.get("negative_kl_run", 0))
    reward_scale = measure_reward_scale(setup, stage, seed) if stage.normalize_reward and setup.reward_folder is not None else 1.0
    start_results = {f"start_{k}": v for k, v in evaluate_on_main(setup, stage, seed, writer, 0).items()}
    return 0, LoopState(stage.kl_coef, reward_scale, bad, start_results)


def step_prompts(stage, setup: PolicySetup, seed: int, step: int) -> list[dict]:
    """This process's share of the step's prompts (the global batch is a function of seed and step)."""
    indices = batch_indices(len(setup.train_prompts), stage.batch_size, seed, step)
    return setup.world.shard([setup.train_prompts[i] for i in indices])


def update_or_skip(
    stage, setup: PolicySetup, models: OnlineModels, rollout: Rollout, kl_coef: float, *, seed: int, step: int
) -> tuple[dict, bool, str]:
    """One PPO or GRPO/RLOO update: (statistics, applied, what a skipped step had non-finite). A non-finite reward in
    any process skips the update; the step is still logged (NaN as null)."""
    world, pad_id = setup.world, setup.tokenizer.pad_token_id
    if float(world.sum((~torch.isfinite(rollout.scores)).float().sum())) > 0:
        return {}, False, "reward"
    with setup.autocast():
        if stage.algorithm == "ppo":
            update, applied = ppo_update(
                models.train_policy,
                models.train_value,
                models.optimizer,
                rollout,
                stage,
                kl_coef=kl_coef,
                pad_id=pad_id,
                world=world,
                seed=seed,
                step=step,
            )
        else:
            update, applied = group_update(
                models.train_policy, models.optimizer, rollout, stage, kl_coef=kl_coef, pad_id=pad_id, world=world, seed=seed, step=step
            )
    return update, applied, "loss or gradient"


def flag_kl(metrics: dict, state: LoopState, writer, stage_name: str, step: int) -> float:
    """Set kl/negative_flag (a persistently negative estimate) and kl/blowup_flag in `metrics`, with a kl_warning
    event when either is set; return the step's mean sequence KL."""
    seq_kl = metrics["objective/kl"]
    state.negative_kl_run = state.negative_kl_run + 1 if seq_kl < -KL_NEGATIVE_TOLERANCE else 0
    metrics["kl/negative_flag"] = float(state.negative_kl_run >= KL_NEGATIVE_STEPS)
    metrics["kl/blowup_flag"] = float(seq_kl / max(metrics["completions/mean_length"], 1.0) > KL_BLOWUP_PER_TOKEN)
    if metrics["kl/negative_flag"] or metrics["kl/blowup_flag"]:
        writer.log_event(
            "kl_warning",
            stage=stage_name,
            step=step,
            kl=seq_kl,
            what="persistent negative KL estimate" if metrics["kl/negative_flag"] else "KL blow-up",
        )
    return seq_kl


def evaluate_on_main(setup: PolicySetup, stage, seed: int, writer, step: int) -> dict:
    """The policy's evaluation at `step`, computed and logged by rank 0 ({} on the other processes, which wait for it)."""
    metrics = evaluate_policy(setup, stage, seed, writer, step) if setup.world.is_main else {}
    setup.world.barrier()
    return metrics


def write_rollout_shard(writer, stage, setup: PolicySetup, rollout: Rollout, step: int) -> None:
    """The step's samples of every process, one row each, as the rollout shard of `step`."""
    full = gather_rollout(rollout, setup.world, setup.tokenizer, setup.prompts_by_index, context_length(setup.policy))
    writer.write_rollouts(
        stage.name, step, rollout_rows(full, stage=stage.name, step=step, first_sample_id=(step - 1) * stage.batch_size * stage.group_size)
    )


def save(writer, stage, tag, setup: PolicySetup, models: OnlineModels, step, metrics, state: LoopState) -> None:
    """A checkpoint with the value model and the training state (the loop state in its `extra`)."""
    training = training_state(models.optimizer, models.scheduler, step, extra=state.resume_extra())
    meta = {"algorithm": stage.algorithm, "reward_from": str(setup.reward_folder or "gold")}
    value_model = models.value_model.model if models.value_model is not None else None
    writer.save_checkpoint(
        stage.name,
        tag,
        model=setup.policy,
        tokenizer=setup.tokenizer,
        step=step,
        metrics=metrics,
        state=training,
        value_model=value_model,
        extra_meta=meta,
    )


def value_model_start(setup: PolicySetup) -> Path:
    """TRL's choice: the value model starts as the reward model, when that reads the policy's tokens
    (same vocabulary, context at least the policy's); otherwise as the policy with a fresh head."""
    folder = setup.reward_folder
    if not is_score_model(folder):
        return setup.policy_folder
    config = read_model_config(folder)
    reward_context = config.get("n_positions") or config.get("max_position_embeddings") or 0
    if load_tokenizer(folder).get_vocab() == setup.tokenizer.get_vocab() and reward_context >= context_length(setup.policy):
        return folder
    warnings.warn(
        f"the reward model {folder} reads other tokens than the policy (tokenizer or context differ); the value model "
        "starts from the policy with a fresh head instead",
        stacklevel=2,
    )
    return setup.policy_folder


def is_score_model(folder) -> bool:
    """A reward checkpoint with a scalar head (a sensible initialisation of the value model)."""
    if folder is None:
        return False
    return any(a.endswith("ForSequenceClassification") for a in read_model_config(folder).get("architectures", []))
