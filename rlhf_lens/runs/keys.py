"""The one table of metric keys, and the TRL-to-ours mapping used by the TRL adapter.

Where TRL logs the same quantity we use TRL's key, so people recognise the curves.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

METRIC_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # PPO/RLOO: mean sequence KL (k1; GRPO logs it too), scores, score - beta*KL, entropy
        "objective": ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy"),
        # PPO: approx KL, clip fraction, losses, value clip fraction, ratio
        "ppo": (
            "policy/approxkl_avg",
            "policy/clipfrac_avg",
            "loss/policy_avg",
            "loss/value_avg",
            "val/clipfrac_avg",
            "val/ratio",
        ),
        # GRPO: reward, its std, KL (k3 as its loss uses it: token mean per sequence), entropy, lengths, clip ratio
        "grpo": ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "clip_ratio/region_mean"),
        "dpo": (
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
        ),
        # reward-model training and eval (ours)
        "reward_model": (
            "rm/loss",
            "rm/accuracy",
            "rm/accuracy_gold",
            "rm/spearman_gold",
            "rm/margin_mean",
            "rm/length_corr",
        ),
        # oracle (ours)
        "gold": ("gold/mean", "gold/std"),
        # policy stages (ours): rollout health, KL controller and flags, evaluation on the eval prompts
        "policy_extra": (
            "completions/finished_rate",
            "kl_coef",
            "kl/negative_flag",
            "kl/blowup_flag",
            "eval/kl",
            "eval/score_mean",
            "eval/gold_mean",
            "eval/gold_sem",
            "eval/mean_length",
            "eval/finished_rate",
            "eval/rewards/accuracies",
        ),
        # language modelling (base, sft)
        "lm": ("loss", "eval/loss", "eval/perplexity"),
    }
)

ALL_METRIC_KEYS: frozenset[str] = frozenset(k for keys in METRIC_KEYS.values() for k in keys)

_OURS_ONLY = {"rm/", "gold/", "eval/", "kl/", "kl_coef", "completions/finished_rate"}

TRL_TO_OURS: Mapping[str, str] = MappingProxyType(
    {
        # keys TRL already logs under our name
        **{k: k for k in sorted(ALL_METRIC_KEYS) if not any(k.startswith(p) for p in _OURS_ONLY)},
        # TRL's Trainer prefixes eval metrics with "eval_"
        "eval_loss": "eval/loss",
        # TRL RewardTrainer
        "accuracy": "rm/accuracy",
        "margin": "rm/margin_mean",
    }
)
