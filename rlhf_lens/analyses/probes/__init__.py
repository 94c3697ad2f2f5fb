"""Probes of what reward models and policies encode: activations per layer collected from checkpoints and streamed
to safetensors shards (`activations`), linear probes per layer with controls (`linear`), the corpus concepts probed
together (`concepts`), concept directions against the reward model's read-out (`directions`), the causal check of a
direction (`steering`), and the analyses the report runs on a run (`analyses`)."""

from rlhf_lens.analyses.probes.activations import ActivationStore, RewardReadout, collect_activations, reward_readout, run_activations
from rlhf_lens.analyses.probes.analyses import (
    analyze_policy_concepts,
    analyze_policy_probes_over_training,
    analyze_policy_steering,
    analyze_reward_concepts,
    analyze_reward_directions,
    analyze_reward_probes_over_training,
    analyze_reward_steering,
    checkpoint_concept_probes,
    concept_directions,
    probe_texts,
    probes_over_training,
    residual_activations,
)
from rlhf_lens.analyses.probes.concepts import (
    CONCEPTS,
    ConceptProbesResult,
    ProbesOverTrainingResult,
    ProbeTexts,
    corpus_probe_texts,
    last_words,
    probe_concepts,
    residual_stream,
)
from rlhf_lens.analyses.probes.directions import (
    DirectionAlignmentResult,
    concept_patterns,
    probe_directions,
    readout_direction,
    reward_direction_alignment,
    reward_readout_direction,
)
from rlhf_lens.analyses.probes.linear import ProbeResult, control_task_labels, grouped_folds, probe_layers
from rlhf_lens.analyses.probes.steering import ConceptSteeringResult, SteeringResult, steer_policy, steer_rewards, transformer_blocks

__all__ = [
    "CONCEPTS",
    "ActivationStore",
    "ConceptProbesResult",
    "ConceptSteeringResult",
    "DirectionAlignmentResult",
    "ProbeResult",
    "ProbeTexts",
    "ProbesOverTrainingResult",
    "RewardReadout",
    "SteeringResult",
    "analyze_policy_concepts",
    "analyze_policy_probes_over_training",
    "analyze_policy_steering",
    "analyze_reward_concepts",
    "analyze_reward_directions",
    "analyze_reward_probes_over_training",
    "analyze_reward_steering",
    "checkpoint_concept_probes",
    "collect_activations",
    "concept_directions",
    "concept_patterns",
    "control_task_labels",
    "corpus_probe_texts",
    "grouped_folds",
    "last_words",
    "probe_concepts",
    "probe_directions",
    "probe_layers",
    "probe_texts",
    "probes_over_training",
    "readout_direction",
    "residual_activations",
    "residual_stream",
    "reward_direction_alignment",
    "reward_readout",
    "reward_readout_direction",
    "run_activations",
    "steer_policy",
    "steer_rewards",
    "transformer_blocks",
]
