"""Analyses that read run directories and explain what happened in them. They read runs only.

Each `analyze_*` function takes a `Run` (plus a stage name where it is about one stage)
and returns a Result: `.df` (tidy DataFrame), `.plot(ax=None)`, `.to_html()`, and a rich
display in Jupyter. `analyze(run)` runs every analysis that applies to a run through the
cache under <run>/analyses/ (what `rlhf-lens analyze` does).
"""

from rlhf_lens.analyses.core.cache import Outcome, analyze, cache_key, plan, run_task
from rlhf_lens.analyses.core.registry import Analysis, Needs, Section, all_analyses, get_analysis, sections
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict, judge
from rlhf_lens.analyses.curves import CurvesResult, analyze_training_curves
from rlhf_lens.analyses.feedback import (
    DisputedFeedbackResult,
    FeedbackCountsResult,
    LabelersResult,
    analyze_disputed_feedback,
    analyze_feedback_counts,
    analyze_labelers,
)
from rlhf_lens.analyses.policy_outcome import (
    PolicyOutcomeResult,
    PolicyTrendsResult,
    SampleCompletionsResult,
    analyze_policy_outcome,
    analyze_policy_trends,
    analyze_sample_completions,
)
from rlhf_lens.analyses.provenance import (
    ConfigResult,
    DataFilesResult,
    EnvironmentResult,
    StagesResult,
    analyze_config,
    analyze_data_files,
    analyze_environment,
    analyze_stages,
)
from rlhf_lens.analyses.reward_model import (
    RewardCalibrationResult,
    RewardCheckpointsResult,
    RewardLengthResult,
    analyze_reward_calibration,
    analyze_reward_checkpoints,
    analyze_reward_length,
)

__all__ = [
    "Analysis",
    "ConfigResult",
    "CurvesResult",
    "DataFilesResult",
    "DisputedFeedbackResult",
    "EnvironmentResult",
    "FeedbackCountsResult",
    "LabelersResult",
    "Needs",
    "Outcome",
    "PolicyOutcomeResult",
    "PolicyTrendsResult",
    "Result",
    "RewardCalibrationResult",
    "RewardCheckpointsResult",
    "RewardLengthResult",
    "SampleCompletionsResult",
    "Section",
    "StagesResult",
    "Verdict",
    "all_analyses",
    "analyze",
    "analyze_config",
    "analyze_data_files",
    "analyze_disputed_feedback",
    "analyze_environment",
    "analyze_feedback_counts",
    "analyze_labelers",
    "analyze_policy_outcome",
    "analyze_policy_trends",
    "analyze_reward_calibration",
    "analyze_reward_checkpoints",
    "analyze_reward_length",
    "analyze_sample_completions",
    "analyze_stages",
    "analyze_training_curves",
    "cache_key",
    "get_analysis",
    "judge",
    "plan",
    "run_task",
    "sections",
]
