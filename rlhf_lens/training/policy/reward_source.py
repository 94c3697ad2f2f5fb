"""The reward a policy stage optimises: a trained reward model (any kind) or the task's oracle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rlhf_lens.models import generative_rewards, load_causal_lm, load_tokenizer, score_texts, write_critiques
from rlhf_lens.runs import load_hf_folder

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
    """A reward checkpoint folder as a reward function; its kind is read from meta.json."""
    folder = Path(folder)
    meta_file = folder / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    tokenizer = load_tokenizer(folder)
    if meta.get("reward_kind") == "generative":
        model = load_causal_lm(folder).to(device)
        critique_first = bool(meta.get("critique_first", True))

        def generative(prompts, completions):
            critiques = write_critiques(model, tokenizer, prompts, completions, max_new_tokens=40) if critique_first else None
            return generative_rewards(model, tokenizer, prompts, completions, critiques).cpu().numpy()

        return RewardSource(str(folder), generative)
    model = load_hf_folder(folder, "score", num_labels=1).to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    return RewardSource(str(folder), lambda prompts, completions: score_texts(model, tokenizer, prompts, completions).cpu().numpy())


def gold_source(task) -> RewardSource:
    if not getattr(task, "has_oracle", False):
        raise RewardError(f"reward_from = \"gold\" needs a task with an oracle; task {type(task).__name__} has none")
    return RewardSource(GOLD, task.gold_reward)
