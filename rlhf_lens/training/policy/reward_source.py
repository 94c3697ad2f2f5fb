"""The reward a policy stage optimises: a trained reward model (any kind) or the task's oracle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf_lens.models import load_reward_function

GOLD = "gold"


class RewardError(RuntimeError):
    """The reward function failed or returned something unusable."""


@dataclass
class RewardSource:
    """A named reward function: score(prompts, completions) -> (n,) float64."""

    name: str
    """Where the reward comes from (a checkpoint folder or "gold"), for messages and run.json."""
    fn: Callable[[Sequence[str], Sequence[str]], np.ndarray]

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Rewards as float64 of shape (n,); NaN/inf are passed through for the caller's guard."""
        try:
            rewards = np.asarray(self.fn(list(prompts), list(completions)), dtype=np.float64).reshape(-1)
        except Exception as exc:  # noqa: BLE001 - any failure of user/model code is reported with its origin
            raise RewardError(f"the reward function ({self.name}) raised {type(exc).__name__}: {exc}") from exc
        if rewards.shape != (len(prompts),):
            raise RewardError(f"the reward function ({self.name}) returned {rewards.size} values for {len(prompts)} completions")
        return rewards


def reward_model_source(folder: str | Path, device: torch.device) -> RewardSource:
    """A reward checkpoint folder as a reward function, read as its reward stage read it (kind and
    critique length from its meta.json; see `rlhf_lens.models.load_reward_function`)."""
    return RewardSource(str(Path(folder)), load_reward_function(folder, device))


def gold_source(task) -> RewardSource:
    if not getattr(task, "has_oracle", False):
        raise RewardError(f'reward_from = "gold" needs a task with an oracle; task {type(task).__name__} has none')
    return RewardSource(GOLD, task.gold_reward)
