"""Probes of what reward models and policies encode: activations per layer collected from checkpoints and streamed
to safetensors shards (`activations`), linear probes per layer with controls (`linear`), concept directions against
the reward model's read-out (`directions`), and the causal check of a direction (`steering`). The registered report
analyses are still to come (issue 12)."""

from rlhf_lens.analyses.probes.activations import ActivationStore, RewardReadout, collect_activations, reward_readout, run_activations
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
    "ActivationStore",
    "RewardReadout",
    "collect_activations",
    "reward_readout",
    "run_activations",
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
