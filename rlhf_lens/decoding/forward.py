"""The decoder's arithmetic over `DecoderWeights`: embedding, one block, the logits, with a key/value cache.

Pure functions of tensors, no module dispatch: each block is a handful of `F.linear` calls and one
`F.scaled_dot_product_attention`. Keys and values are written into preallocated caches at slots
[start, start + seq) and attention reads slots [0, start + seq) under an additive mask (`attention_bias`: 0 where
a query may attend a key, -inf where not), built once per call and shared by every layer.

Shape glossary: batch, seq (new positions this call), slots (cache length), d_model, n_head, n_kv_head,
head_dim, rot (rotary dims), vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.torch_version import TorchVersion

from rlhf_lens.decoding.weights import DecoderWeights, LayerWeights

__all__ = ["attention_bias", "block", "embed", "final_logits", "rotary_at"]

MATMUL_ONE_QUERY_ON_CPU = True
"""Attend a single new position with two batched matmuls on the CPU (faster there than SDPA's kernels, which are
built for many queries); SDPA everywhere else. The tests turn it off to check the SDPA path too."""
SDPA_TAKES_GQA = TorchVersion(torch.__version__) >= (2, 5)
"""`enable_gqa` arrived in torch 2.5; before it, grouped key/value heads are repeated for SDPA."""


def attention_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask of a boolean one (True: may attend): 0 or -inf, same shape."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def embed(weights: DecoderWeights, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Token (+ learned position) embeddings: ids, positions (batch, seq) -> (batch, seq, d_model)."""
    x = F.embedding(ids, weights.embed)
    if weights.positions is not None:
        x = x + F.embedding(positions, weights.positions)
    return x


def rotary_at(weights: DecoderWeights, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """cos, sin at each position, ready to broadcast over heads: (batch, seq) -> two (batch, 1, seq, rot); None when
    the model has no rotary embedding."""
    if weights.rotary is None:
        return None
    cos, sin = weights.rotary
    return cos[positions][:, None], sin[positions][:, None]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotate-half rotary embedding on the first rot dims of each head: (batch, heads, seq, head_dim)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = x_rot * cos + torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1) * sin
    return torch.cat((rotated, x_pass), dim=-1) if x_pass.shape[-1] else rotated


def _heads(x: torch.Tensor, n: int, head_dim: int) -> torch.Tensor:
    """(batch, seq, n * head_dim) -> (batch, n, seq, head_dim)."""
    return x.view(x.shape[0], x.shape[1], n, head_dim).transpose(1, 2)


def _mlp(layer: LayerWeights, h: torch.Tensor) -> torch.Tensor:
    up = F.linear(h, layer.up, layer.up_bias)  # (batch, seq, d_ff)
    inner = layer.act(F.linear(h, layer.gate, layer.gate_bias)) * up if layer.gate is not None else layer.act(up)
    return F.linear(inner, layer.down, layer.down_bias)


def _write(cache: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor):
    """Write keys and values (batch, n_kv_head, seq, head_dim) at cache slots [start, start + seq) -> the keys and
    values to attend. A tensor `start` (static shapes, for CUDA graphs) writes one slot and returns every slot."""
    keys, values = cache  # (batch, n_kv_head, slots, head_dim) each
    if isinstance(start, torch.Tensor):
        keys.index_copy_(2, start.view(1), k)
        values.index_copy_(2, start.view(1), v)
        return keys, values
    end = start + k.shape[2]
    keys[:, :, start:end] = k
    values[:, :, start:end] = v
    return keys[:, :, :end], values[:, :, :end]


def _one_query_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one new position per row, as two batched matmuls: on the CPU these beat SDPA's kernels, which are
    built for many queries. The query heads that share a key/value head (GQA) become that head's query rows.
    q (batch, n_head, 1, head_dim), keys/values (batch, n_kv_head, slots, head_dim), bias (batch, 1, 1, slots)
    -> (batch, n_head, 1, head_dim)."""
    batch, n_head, _, head_dim = q.shape
    grouped = q.reshape(batch, keys.shape[1], n_head // keys.shape[1], head_dim)  # (batch, n_kv_head, group, head_dim)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).mul_(scale).add_(bias)  # (batch, n_kv_head, group, slots)
    return torch.matmul(scores.softmax(-1), values).reshape(batch, n_head, 1, head_dim)


def _sdpa(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """`F.scaled_dot_product_attention` with grouped key/value heads (GQA): (batch, n_head, seq, head_dim)."""
    group = q.shape[1] // keys.shape[1]
    if group == 1:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=scale)
    if SDPA_TAKES_GQA:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=scale, enable_gqa=True)
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=scale)


def _attention(
    weights: DecoderWeights,
    layer: LayerWeights,
    h: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    cache: tuple[torch.Tensor, torch.Tensor],
    start: int | torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Self-attention of h (batch, seq, d_model) over the cache, after writing this call's keys and values into it."""
    n_q, n_kv, head_dim = weights.n_head * weights.head_dim, weights.n_kv_head * weights.head_dim, weights.head_dim
    qkv = F.linear(h, layer.qkv, layer.qkv_bias)  # (batch, seq, n_q + 2 * n_kv)
    q = _heads(qkv[..., :n_q], weights.n_head, head_dim)  # (batch, n_head, seq, head_dim)
    k = _heads(qkv[..., n_q : n_q + n_kv], weights.n_kv_head, head_dim)  # (batch, n_kv_head, seq, head_dim)
    v = _heads(qkv[..., n_q + n_kv :], weights.n_kv_head, head_dim)
    if rotary is not None:
        q, k = _rotate(q, *rotary), _rotate(k, *rotary)
    keys, values = _write(cache, k, v, start)
    if q.shape[2] == 1 and q.device.type == "cpu" and MATMUL_ONE_QUERY_ON_CPU:
        out = _one_query_attention(q, keys, values, mask, weights.scale)
    else:
        out = _sdpa(q, keys, values, mask, weights.scale)
    out = out.transpose(1, 2).reshape(h.shape[0], h.shape[1], n_q)  # (batch, seq, n_head * head_dim)
    return F.linear(out, layer.out, layer.out_bias)


def block(
    weights: DecoderWeights,
    layer: LayerWeights,
    x: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor] | None,
    cache: tuple[torch.Tensor, torch.Tensor],
    start: int | torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One transformer block on the residual stream x (batch, seq, d_model) at cache slots [start, start + seq);
    mask (batch, 1, seq, start + seq) additive (`attention_bias`), or (batch, 1, 1, slots) with a tensor `start`
    -> (batch, seq, d_model)."""
    attended = _attention(weights, layer, layer.attn_norm(x), rotary, cache, start, mask)
    if weights.parallel_residual:
        return x + attended + _mlp(layer, layer.mlp_norm(x))
    x = x + attended
    return x + _mlp(layer, layer.mlp_norm(x))


def final_logits(weights: DecoderWeights, x: torch.Tensor) -> torch.Tensor:
    """Logits of the residual stream: (..., d_model) -> (..., vocab) in float32."""
    return F.linear(weights.final_norm(x), weights.unembed).float()
