"""A lean decoder for sampling: the HF model's own weights, a preallocated key/value cache and a decode loop with
little Python per token. `sample` draws `models.sample`'s samples for the same prompts and seeds: the same noise, and
logits equal to float rounding (1e-6 here), so only a near-tie between two tokens' noisy scores could differ."""

from rlhf_lens.decoding.sampler import sample
from rlhf_lens.decoding.weights import UnsupportedModel, read_weights

__all__ = ["UnsupportedModel", "read_weights", "sample"]
