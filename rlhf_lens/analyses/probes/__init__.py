"""Probes of what reward models and policies encode: linear probes per layer with controls (`linear`), concept
directions against the reward model's read-out (`directions`), and the causal check of a direction (`steering`).
Activation collection from run checkpoints and the registered report analyses are still to come (issue 12)."""

from rlhf_lens.analyses.probes.directions import (
    DirectionAlignmentResult,
    concept_patterns,
    probe_directions,
    readout_direction,
    reward_direction_alignment,
    reward_readout_direction,
)
from rlhf_lens.analyses.probes.linear import ProbeResult, control_task_labels, grouped_folds, probe_layers
from rlhf_lens.analyses.probes.steering import SteeringResult, steer_policy, steer_rewards, transformer_blocks

__all__ = [
    "DirectionAlignmentResult",
    "ProbeResult",
    "SteeringResult",
    "concept_patterns",
    "control_task_labels",
    "grouped_folds",
    "probe_directions",
    "probe_layers",
    "readout_direction",
    "reward_direction_alignment",
    "reward_readout_direction",
    "steer_policy",
    "steer_rewards",
    "transformer_blocks",
]
