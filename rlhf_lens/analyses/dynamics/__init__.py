"""How a policy moved during optimisation: reward over-optimisation after Gao et al. (2023) (`overoptimization`)."""

from rlhf_lens.analyses.dynamics.analyses import analyze_overoptimization
from rlhf_lens.analyses.dynamics.overoptimization import (
    FORMS,
    GaoFit,
    OverOptimizationResult,
    best_of_n_distance,
    gao_curve,
    gao_fit,
    overoptimization,
)

__all__ = [
    "FORMS",
    "GaoFit",
    "OverOptimizationResult",
    "analyze_overoptimization",
    "best_of_n_distance",
    "gao_curve",
    "gao_fit",
    "overoptimization",
]
