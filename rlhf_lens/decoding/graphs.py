"""The decode step with static shapes, captured in a CUDA graph: one launch per token instead of one per kernel.

On a GPU a small model's decode step is a few dozen tiny kernels, and launching them costs more than running them;
a CUDA graph replays the whole step at once. Graphs need static shapes and addresses, so the step here attends over
every cache slot under a mask (instead of a growing slice), writes its keys at a slot held in a tensor, and keeps
its inputs in fixed buffers. Rows are not dropped as they finish (that would change the shapes). Off CUDA the same
step runs eagerly, which is how the CPU tests check it against `sampler.decode_step`.

Shape glossary: batch, slots, vocab.
"""

from __future__ import annotations

import torch

from rlhf_lens.decoding.forward import attention_bias, block, embed, final_logits, rotary_at
from rlhf_lens.decoding.weights import DecoderWeights

__all__ = ["StaticDecodeStep"]

WARMUP_STEPS = 2
"""Eager runs on a side stream before capture, as CUDA graph capture requires (allocator and kernel warm-up); each
rewinds the slot and position, so they touch only the slot the first real step overwrites."""


class StaticDecodeStep:
    """`decode_step` over fixed buffers: feed one token per row, get the next logits; graphed on CUDA."""

    def __init__(
        self,
        weights: DecoderWeights,
        cache: list[tuple[torch.Tensor, torch.Tensor]],
        key_valid: torch.Tensor,
        next_position: torch.Tensor,
        next_slot: int,
        *,
        capture: bool = True,
    ):
        device = key_valid.device
        self.weights, self.cache, self.key_valid = weights, cache, key_valid  # key_valid (batch, slots) bool
        self.tokens = torch.zeros(key_valid.shape[0], dtype=torch.long, device=device)  # (batch,)
        self.position = next_position.clone()  # (batch,)
        self.slot = torch.tensor(next_slot, device=device)  # () the cache slot this step writes
        self.slot_ids = torch.arange(key_valid.shape[1], device=device)  # (slots,)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        if capture and device.type == "cuda":
            self._capture()

    def _step(self) -> torch.Tensor:
        """One decode step on the buffers, advancing slot and position in place -> logits (batch, vocab)."""
        positions = self.position[:, None]  # (batch, 1)
        x, rotary = embed(self.weights, self.tokens[:, None], positions), rotary_at(self.weights, positions)
        attend = attention_bias((self.key_valid & (self.slot_ids <= self.slot))[:, None, None, :], self.weights.dtype)
        for layer, layer_cache in zip(self.weights.layers, self.cache):
            x = block(self.weights, layer, x, rotary, layer_cache, self.slot, attend)
        self.slot += 1
        self.position += 1
        return final_logits(self.weights, x[:, 0])

    def _capture(self) -> None:
        slot, position = self.slot.clone(), self.position.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._step()
                self.slot.copy_(slot)
                self.position.copy_(position)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads' CUDA calls (a DDP/NCCL watchdog) are not errors during capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # recorded, not run
            self.logits = self._step()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits
