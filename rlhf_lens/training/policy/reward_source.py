"""The reward a policy stage optimises: a trained reward model (any kind) or the task's oracle."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf_lens.models import judge_texts, load_causal_lm, load_tokenizer, score_texts
from rlhf_lens.runs import load_hf_folder, read_checkpoint_meta
from rlhf_lens.training.config import RewardStageConfig

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
    critique length from its meta.json)."""
    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    tokenizer = load_tokenizer(folder)
    if meta.get("reward_kind") == "generative":
        model = load_causal_lm(folder).to(device)
        critique_first, critique_max_tokens = bool(meta.get("critique_first", True)), critique_length(meta, folder)

        def generative(prompts, completions):
            return (
                judge_texts(model, tokenizer, prompts, completions, critique_first=critique_first, critique_max_tokens=critique_max_tokens)
                .cpu()
                .numpy()
            )

        return RewardSource(str(folder), generative)
    model = load_hf_folder(folder, "score", num_labels=1).to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    return RewardSource(str(folder), lambda prompts, completions: score_texts(model, tokenizer, prompts, completions).cpu().numpy())


def critique_length(meta: dict, folder: Path) -> int:
    """The generative reward stage's critique length; checkpoints written before meta.json recorded it
    were trained with the default, which is assumed with a warning."""
    if "critique_max_tokens" in meta:
        return int(meta["critique_max_tokens"])
    default = RewardStageConfig.critique_max_tokens
    warnings.warn(
        f"{folder}: the checkpoint's metadata does not record critique_max_tokens (written by an older rlhf-lens); "
        f"critiques are written with the default {default} tokens",
        stacklevel=3,
    )
    return default


def gold_source(task) -> RewardSource:
    if not getattr(task, "has_oracle", False):
        raise RewardError(f'reward_from = "gold" needs a task with an oracle; task {type(task).__name__} has none')
    return RewardSource(GOLD, task.gold_reward)
