"""Reward hacking: whether a policy raised its proxy reward by exploiting the reward model. The library (`length`:
the proxy gain explained by length; `lexical`: words that rose without gold value; `divergence`: proxy against gold
over evaluations) and the analyses registered for runs (`analyses`)."""

from rlhf_lens.analyses.hacking.analyses import (
    analyze_length_hacking,
    analyze_lexical_exploits,
    analyze_proxy_gold_divergence,
    rollout_samples,
)
from rlhf_lens.analyses.hacking.divergence import ProxyGoldDivergenceResult, divergence_verdict, proxy_gold_divergence
from rlhf_lens.analyses.hacking.length import LengthGainResult, length_bins, length_gain_decomposition, length_verdict
from rlhf_lens.analyses.hacking.lexical import LexicalExploitsResult, completion_words, lexical_exploits, lexical_verdict

__all__ = [
    "LengthGainResult",
    "LexicalExploitsResult",
    "ProxyGoldDivergenceResult",
    "analyze_length_hacking",
    "analyze_lexical_exploits",
    "analyze_proxy_gold_divergence",
    "completion_words",
    "divergence_verdict",
    "length_bins",
    "length_gain_decomposition",
    "length_verdict",
    "lexical_exploits",
    "lexical_verdict",
    "proxy_gold_divergence",
    "rollout_samples",
]
