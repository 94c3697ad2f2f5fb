"""Attribution of a reward model's reward to its input tokens and words (library layer; not registered)."""

from rlhf_lens.analyses.attribution.reward import (
    RewardAttributionResult,
    reward_feature_ablation,
    reward_integrated_gradients,
    word_starts,
)
from rlhf_lens.analyses.attribution.words import mean_word_attributions, word_attributions

__all__ = [
    "RewardAttributionResult",
    "mean_word_attributions",
    "reward_feature_ablation",
    "reward_integrated_gradients",
    "word_attributions",
    "word_starts",
]
