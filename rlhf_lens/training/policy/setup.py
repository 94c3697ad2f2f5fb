"""What every policy stage starts from: the policy and its frozen reference, the reward, the prompts,
the device and the processes."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf_lens.models import check_vocab_fits, context_length, encode_prompts, load_causal_lm, load_tokenizer
from rlhf_lens.runs import resolve_init_from
from rlhf_lens.training.config import ConfigError
from rlhf_lens.training.distributed import World, init_world, local_device
from rlhf_lens.training.policy.reward_source import GOLD, RewardSource, gold_source, reward_model_source


@dataclass
class PolicySetup:
    device: torch.device
    world: World
    policy_folder: Path
    policy: torch.nn.Module
    reference: torch.nn.Module
    """The starting policy, frozen: KL is measured against it."""
    tokenizer: object
    reward: RewardSource | None
    """None for DPO, which learns from preference pairs without a reward."""
    reward_folder: Path | None
    """The reward checkpoint folder (None for the oracle)."""
    gold_fn: object
    """The task's oracle reward, or None."""
    train_prompts: list[dict]
    """{"index" (line in data/prompts.jsonl), "id", "prompt", "split"} of the training split."""
    eval_prompts: list[dict]
    bf16: bool
    resume_folder: Path | None = None
    """The checkpoint a resumed stage continues from (its policy and value weights)."""

    @property
    def prompts_by_index(self) -> dict[int, dict]:
        return {p["index"]: p for p in self.train_prompts + self.eval_prompts}

    def autocast(self):
        """bf16 autocast on CUDA when the stage asks for it; a no-op on CPU."""
        if self.device.type == "cuda" and self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def policy_folder(stage, ctx) -> Path:
    if stage.name in ctx.sources:
        return Path(ctx.sources[stage.name]["path"])
    if ctx.latest_lm_folder is not None:
        return ctx.latest_lm_folder
    raise ConfigError(
        f"stages.{stage.name}: a policy stage needs a language model to start from. Put an sft stage before it "
        f'or set stages.{stage.name}.init_from (e.g. "runs/X:sft/final").'
    )


def reward_folder(stage, ctx) -> Path | None:
    """The reward checkpoint folder the stage optimises (None for the oracle)."""
    if stage.reward_from == GOLD:
        return None
    if stage.reward_from:
        return Path(resolve_init_from(stage.reward_from)["path"])
    if ctx.latest_reward_folder is not None:
        return ctx.latest_reward_folder
    raise ConfigError(
        f"stages.{stage.name}: {stage.algorithm} needs a reward. Put a reward stage before it, set "
        f'stages.{stage.name}.reward_from = "runs/X:reward/final", or "gold" for the task\'s oracle.'
    )


def setup_policy_stage(stage, ctx, *, needs_reward: bool = True, resume_folder: Path | None = None) -> PolicySetup:
    """Load everything; a resumed stage takes its policy weights from `resume_folder`, the reference from the start."""
    device = local_device(stage.device)
    world = init_world(device)
    check_batch_split(stage, world)
    folder = policy_folder(stage, ctx)
    tokenizer = load_tokenizer(folder)
    policy = load_causal_lm(resume_folder or folder).to(device)
    check_vocab_fits(policy, tokenizer, where=str(folder))
    reference = load_causal_lm(folder).to(device).requires_grad_(False)
    rm_folder = reward_folder(stage, ctx) if needs_reward else None
    reward = None
    if needs_reward:
        reward = gold_source(ctx.task) if rm_folder is None else reward_model_source(rm_folder, device)
    gold_fn = ctx.task.gold_reward if getattr(ctx.task, "has_oracle", False) else None
    prompts = [{"index": i, "id": str(p["id"]), "prompt": p["prompt"], "split": p["split"]} for i, p in enumerate(ctx.data.prompts)]
    train = [p for p in prompts if p["split"] == "train"]
    evals = [p for p in prompts if p["split"] == "eval"]
    warn_long_prompts(stage, ctx, tokenizer, context_length(policy), train + evals)
    return PolicySetup(
        device, world, folder, policy, reference, tokenizer, reward, rm_folder, gold_fn, train, evals, stage.bf16, resume_folder
    )


def check_batch_split(stage, world: World) -> None:
    """Every process gets whole prompts, and online stages split them into equal minibatches."""
    per_process, rest = divmod(stage.batch_size, world.size)
    minibatches = stage.minibatches if stage.algorithm in ("ppo", "grpo", "rloo") else 1
    if rest or per_process % minibatches:
        raise ConfigError(
            f"stages.{stage.name}.batch_size ({stage.batch_size}) must split evenly over {world.size} process(es) and then into "
            f"{minibatches} minibatch(es); make it a multiple of {world.size * minibatches}."
        )


def warn_long_prompts(stage, ctx, tokenizer, context: int, prompts: list[dict]) -> int:
    """Prompts that leave fewer than max_new_tokens of context keep their last tokens; say so once."""
    budget = context - stage.max_new_tokens
    if budget < 1:
        raise ConfigError(
            f"stages.{stage.name}.max_new_tokens ({stage.max_new_tokens}) leaves no room for a prompt in the model's context "
            f"of {context} tokens; lower max_new_tokens."
        )
    lengths = np.array([len(ids) for ids in encode_prompts(tokenizer, [p["prompt"] for p in prompts])])
    too_long = int((lengths > budget).sum())
    if too_long:
        warnings.warn(
            f"stages.{stage.name}: {too_long} of {len(prompts)} prompts are longer than the {budget} tokens the context of "
            f"{context} leaves beside max_new_tokens={stage.max_new_tokens}; they keep their last {budget} tokens.",
            stacklevel=2,
        )
        ctx.writer.log_event("prompts_truncated", stage=stage.name, count=too_long, budget=budget)
    return too_long
