"""Optimizer, schedule, resumable training state and the count of non-finite steps that stops a stage,
shared by every stage's loop."""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.1):
    """LR multiplier: linear warmup to 1, then cosine decay to `floor` at `total_steps`."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
    """AdamW (no decay on biases and norms) with a warmup-cosine schedule."""
    return make_multi_optimizer([(model, lr)], weight_decay, warmup_steps, total_steps)


def make_multi_optimizer(models: list[tuple[torch.nn.Module, float]], weight_decay: float, warmup_steps: int, total_steps: int):
    """One AdamW over several models, each with its own peak learning rate (e.g. PPO's policy and value
    model), no decay on biases and norms, and one warmup-cosine schedule."""
    groups = []
    for model, lr in models:
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups += [{"params": decay, "weight_decay": weight_decay, "lr": lr}, {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    optimizer = torch.optim.AdamW(groups, lr=models[0][1])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))
    return optimizer, scheduler


def training_state(optimizer, scheduler, step: int, extra: dict | None = None) -> dict:
    """Everything exact resume needs besides the weights (stored as state.safetensors + state.json)."""
    return {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        "extra": extra or {},
    }


def restore_training_state(state: dict, optimizer, scheduler) -> int:
    """Load optimizer, scheduler and RNG state; return the step to continue after."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler_state = dict(state["scheduler"])
    scheduler_state["lr_lambdas"] = [None] * len(optimizer.param_groups)
    scheduler.load_state_dict(scheduler_state)
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return int(state["step"])


SUPERVISED_MAX_BAD_STEPS = 5
"""The bad-step limit of stages without a `max_bad_steps` field (base, sft, reward)."""


class BadStepCounter:
    """Consecutive steps skipped for non-finite rewards, losses or gradients; the stage stops when `limit` steps
    in a row were bad (limit 3: the third bad step in a row raises, after its `nan_skip` event is logged)."""

    def __init__(self, stage: str, limit: int, *, limit_setting: str | None = None):
        self.stage, self.limit, self.consecutive = stage, limit, 0
        self.limit_setting = limit_setting
        """The config field that sets `limit` (named in the error), or None where it is fixed."""

    @classmethod
    def of(cls, stage) -> BadStepCounter:
        """The counter of a stage config: its `max_bad_steps`, or SUPERVISED_MAX_BAD_STEPS where it has none."""
        if hasattr(stage, "max_bad_steps"):
            return cls(stage.name, stage.max_bad_steps, limit_setting=f"stages.{stage.name}.max_bad_steps")
        return cls(stage.name, SUPERVISED_MAX_BAD_STEPS)

    def ok(self) -> None:
        self.consecutive = 0

    def bad(self, step: int, what: str) -> None:
        """Count a skipped step; raise FloatingPointError once `limit` steps in a row were bad."""
        self.consecutive += 1
        if self.consecutive >= self.limit:
            if self.limit_setting:
                advice = f"Check the reward function, lower stages.{self.stage}.lr, or raise {self.limit_setting}."
            else:
                advice = f"Check the data, or lower stages.{self.stage}.lr."
            raise FloatingPointError(
                f"stage {self.stage}: {self.consecutive} consecutive steps (up to step {step}) had non-finite {what}; stopping so "
                f"no NaN reaches the weights. The last complete checkpoint is intact. {advice}"
            )
