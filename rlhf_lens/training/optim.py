"""Optimizer, schedule, resumable training state and the non-finite-loss guard,
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


class NonFiniteGuard:
    """Counts steps skipped for a NaN/inf loss and stops the run after too many in a row."""

    def __init__(self, max_consecutive: int, where: str):
        self.max_consecutive = max_consecutive
        self.where = where
        self.consecutive = 0
        self.total = 0

    def check(self, value: torch.Tensor) -> bool:
        """True if the step may proceed; False to skip it. Raises after too many bad steps."""
        if torch.isfinite(value).all():
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        if self.consecutive > self.max_consecutive:
            raise FloatingPointError(
                f"{self.where}: {self.consecutive} consecutive steps had a non-finite loss or reward; stopping so "
                "no NaN reaches the weights. Lower the learning rate or check the reward function."
            )
        return False
