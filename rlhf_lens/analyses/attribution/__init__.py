"""Attribution of a reward model's reward to its input tokens and words: the library (`reward`, `words`) and the
analyses registered for runs (`analyses`)."""

from rlhf_lens.analyses.attribution.analyses import RewardWordsResult, analyze_policy_sample_attribution, analyze_reward_words
from rlhf_lens.analyses.attribution.perturbation import reward_feature_ablation, reward_shapley_sampling
from rlhf_lens.analyses.attribution.reward import RewardAttributionResult, reward_integrated_gradients, word_starts
from rlhf_lens.analyses.attribution.words import mean_word_attributions, word_attributions

__all__ = [
    "RewardWordsResult",
    "analyze_policy_sample_attribution",
    "analyze_reward_words",
    "RewardAttributionResult",
    "mean_word_attributions",
    "reward_feature_ablation",
    "reward_integrated_gradients",
    "reward_shapley_sampling",
    "word_attributions",
    "word_starts",
]
