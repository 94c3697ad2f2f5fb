"""The dynamics analyses a run gets from `rlhf-lens analyze` and the report (built on `dynamics.overoptimization`)."""

from __future__ import annotations

from rlhf_lens.analyses.core.registry import Needs, analysis
from rlhf_lens.analyses.dynamics.overoptimization import OverOptimizationResult, overoptimization
from rlhf_lens.runs import Run


def _evaluations(run: Run, stage: str | None) -> str | None:
    samples = run.eval_rollouts(stage)
    if samples["step"].nunique() < 3:
        return f"stage {stage!r} logged {samples['step'].nunique()} evaluation(s); over-optimisation needs 3 (set eval_every)"
    if samples["gold_reward"].isna().all():
        return f"task {run.task!r} has no gold reward to measure over-optimisation against"
    return None


@analysis(
    "dynamics.overoptimization",
    result=OverOptimizationResult,
    section="policy_diff",
    needs=Needs(stage_kind="policy", eval_rollouts=True, requires=_evaluations),
    order=5,
)
def analyze_overoptimization(run: Run, stage: str, *, fall_z: float = 2.0) -> OverOptimizationResult:
    """Proxy and gold reward gain of policy stage `stage` against sqrt(KL) at each evaluation, Gao et al.'s fits, and
    the verdict on over-optimisation.

    Settings:
        fall_z: paired standard errors by which the gold reward must have fallen from its best evaluation to flag.
    """
    return overoptimization(run.eval_rollouts(stage), fall_z=fall_z, meta={"stage": stage})
