"""What alignment changed in a policy, and where: its behaviour on the evaluation prompts (`behaviour`, `diversity`), the weight update tensor by tensor (`weights`), the logit lens of
both policies (`logit_lens`), activation patching between them (`patching`), and the analyses the report runs on a
run's policy stages (`analyses`)."""

from rlhf_lens.analyses.policy_diff.analyses import (
    analyze_activation_patching,
    analyze_behaviour,
    analyze_diversity,
    analyze_logit_lens,
    analyze_position_patching,
    analyze_weight_diff,
)
from rlhf_lens.analyses.policy_diff.behaviour import BehaviourDiffResult, behaviour_diff, token_shifts
from rlhf_lens.analyses.policy_diff.diversity import DiversityResult, distinct_n, diversity_diff, ngram_overlap
from rlhf_lens.analyses.policy_diff.logit_lens import LogitLensResult, lens_logprobs, logit_lens_diff, residual_after_blocks
from rlhf_lens.analyses.policy_diff.patching import (
    SITES,
    PatchingResult,
    PositionPatchingResult,
    activation_patching,
    capture,
    patch_positions,
    patched_logprobs,
)
from rlhf_lens.analyses.policy_diff.weights import WeightDiffResult, delta_spectrum, weight_diff

__all__ = [
    "SITES",
    "BehaviourDiffResult",
    "DiversityResult",
    "LogitLensResult",
    "PatchingResult",
    "PositionPatchingResult",
    "WeightDiffResult",
    "activation_patching",
    "analyze_activation_patching",
    "analyze_behaviour",
    "behaviour_diff",
    "analyze_diversity",
    "analyze_logit_lens",
    "analyze_position_patching",
    "analyze_weight_diff",
    "capture",
    "delta_spectrum",
    "distinct_n",
    "diversity_diff",
    "lens_logprobs",
    "logit_lens_diff",
    "ngram_overlap",
    "patch_positions",
    "patched_logprobs",
    "residual_after_blocks",
    "token_shifts",
    "weight_diff",
]
