"""rlhf-lens: see inside RLHF. Public API re-exports only."""

from rlhf_lens.runs import Run, RunWriter

__all__ = ["Run", "RunWriter"]
