"""Batches for the language-modelling stages, deterministic in (seed, step).

The batch of a step is a function of the seed and the step alone, so the
data position of a resumed run is just its step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from rlhf_lens.models import encode_prompts


def epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_items)


def batch_indices(n_items: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the items in (1-based) `step`'s batch: consecutive slices of per-epoch permutations."""
    start = (step - 1) * batch_size
    indices = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), n_items)
        order = epoch_order(n_items, seed, epoch)
        indices.extend(order[offset : offset + batch_size - len(indices)].tolist())
    return indices


def split_heldout(n_items: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / held-out split of item indices."""
    order = np.random.default_rng([seed, 10_007]).permutation(n_items)
    n_heldout = max(1, int(round(n_items * fraction)))
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


def is_heldout_prompt(prompt: str, fraction: float, seed: int, salt: str = "") -> bool:
    """Whether feedback on `prompt` is held out: sha256 of "<salt>:<seed>:<prompt>" ("<seed>:<prompt>" without a
    salt) read as a number in [0, 1), below `fraction`. A function of the prompt alone, so all records of a prompt
    land in the same split whatever the order of the file.

    Reward stages hash without a salt, DPO with salt "dpo": the two salts stay so that existing runs keep
    exactly the splits they were trained with.
    """
    key = f"{salt}:{seed}:{prompt}" if salt else f"{seed}:{prompt}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 < fraction


def pack_blocks(texts: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """Tokenize texts, join them with EOS and cut into blocks: -> (n_blocks, block_size)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one block of {block_size}")
    return torch.tensor(stream[: n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


@dataclass(frozen=True)
class PromptCompletions:
    """Tokenized prompt -> completion pairs; completions end with EOS."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, indices) -> PromptCompletions:
        return PromptCompletions([self.prompt_ids[i] for i in indices], [self.completion_ids[i] for i in indices])


def tokenize_pairs(pairs: list[dict], tokenizer, context: int) -> PromptCompletions:
    """Tokenize SFT pairs; a pair too long for the context loses prompt tokens from the left."""
    eos = tokenizer.eos_token_id
    prompts = encode_prompts(tokenizer, [p["prompt"] for p in pairs])
    completions = tokenizer([p["completion"] for p in pairs], add_special_tokens=False)["input_ids"]
    prompt_ids, completion_ids = [], []
    for prompt, completion in zip(prompts, completions):
        completion = (completion + [eos])[: context - 1]
        prompt = prompt[-(context - len(completion)) :]
        prompt_ids.append(prompt)
        completion_ids.append(completion)
    return PromptCompletions(prompt_ids, completion_ids)
