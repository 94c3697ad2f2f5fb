"""Attribution: which tokens drive a reward model's reward, a policy's log-probabilities, and the change alignment
made to the policy. The library (`reward`, `perturbation`, `generative`, `policy`, `sanity`, `words`, `over_training`)
and the analyses registered for runs (`analyses`)."""

from rlhf_lens.analyses.attribution.analyses import (
    PolicyAlignmentResult,
    RewardWordsResult,
    analyze_alignment,
    analyze_attribution_sanity,
    analyze_policy_sample_attribution,
    analyze_reward_over_training,
    analyze_reward_words,
)
from rlhf_lens.analyses.attribution.generative import generative_integrated_gradients, generative_token_parts
from rlhf_lens.analyses.attribution.over_training import OverTrainingResult, attribution_over_training, policy_reference
from rlhf_lens.analyses.attribution.perturbation import reward_feature_ablation, reward_shapley_sampling
from rlhf_lens.analyses.attribution.policy import (
    AlignmentAttributionResult,
    AlignmentLogRatioResult,
    PolicyAttributionResult,
    alignment_attribution,
    alignment_log_ratio,
    mean_word_log_ratios,
    policy_attribution,
    word_log_ratios,
)
from rlhf_lens.analyses.attribution.reward import RewardAttributionResult, reward_integrated_gradients, word_starts
from rlhf_lens.analyses.attribution.sanity import SanityCheckResult, attribution_rank_correlations, randomisation_sanity_check
from rlhf_lens.analyses.attribution.words import mean_word_attributions, word_attributions

__all__ = [
    "AlignmentAttributionResult",
    "AlignmentLogRatioResult",
    "OverTrainingResult",
    "PolicyAlignmentResult",
    "PolicyAttributionResult",
    "RewardAttributionResult",
    "RewardWordsResult",
    "SanityCheckResult",
    "alignment_attribution",
    "alignment_log_ratio",
    "analyze_alignment",
    "analyze_attribution_sanity",
    "analyze_policy_sample_attribution",
    "analyze_reward_over_training",
    "analyze_reward_words",
    "attribution_over_training",
    "attribution_rank_correlations",
    "generative_integrated_gradients",
    "generative_token_parts",
    "mean_word_attributions",
    "mean_word_log_ratios",
    "policy_attribution",
    "policy_reference",
    "randomisation_sanity_check",
    "reward_feature_ablation",
    "reward_integrated_gradients",
    "reward_shapley_sampling",
    "word_attributions",
    "word_log_ratios",
    "word_starts",
]
