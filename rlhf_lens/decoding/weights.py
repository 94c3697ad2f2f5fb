"""The weights of a Hugging Face decoder read into one layout that the lean decoder runs on.

A reader takes a GPT-2, Llama or GPT-NeoX causal LM (as `build_model` makes them, or any local HF folder of those
kinds) and returns `DecoderWeights`: plain tensors in `F.linear` layout, the model's own activation functions and its
own rotary tables. Tensors are the model's parameters wherever the layout already fits, and fresh copies where it
does not (GPT-2's Conv1D weights are transposed, Llama's q/k/v projections concatenated), so read the weights again
after an optimiser step: `read_weights` is cheap next to one decode.

Shape glossary: d_model, n_head, n_kv_head, head_dim, vocab, positions (the context length), rot (rotary dims).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["DecoderWeights", "LayerWeights", "Norm", "UnsupportedModel", "cast_weights", "read_weights"]


class UnsupportedModel(ValueError):
    """The lean decoder cannot run this model (its architecture or an option of it); use `models.sample`."""


@dataclass(frozen=True)
class Norm:
    """A LayerNorm (bias may be None) or, with `rms`, an RMSNorm as Llama computes it."""

    weight: torch.Tensor  # (d_model,)
    bias: torch.Tensor | None
    eps: float
    rms: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rms:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        # Llama's RMSNorm: normalise in float32, cast back, then scale.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


@dataclass(frozen=True)
class LayerWeights:
    """One transformer block."""

    attn_norm: Norm
    qkv: torch.Tensor  # ((n_head + 2 * n_kv_head) * head_dim, d_model): q rows, then k, then v
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # (d_model, n_head * head_dim)
    out_bias: torch.Tensor | None
    mlp_norm: Norm
    up: torch.Tensor  # (d_ff, d_model)
    up_bias: torch.Tensor | None
    gate: torch.Tensor | None  # (d_ff, d_model): Llama's gated MLP, act(gate x) * (up x)
    gate_bias: torch.Tensor | None
    down: torch.Tensor  # (d_model, d_ff)
    down_bias: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DecoderWeights:
    """A whole decoder: embeddings, blocks, final norm and unembedding, with the attention geometry."""

    embed: torch.Tensor  # (vocab, d_model)
    positions: torch.Tensor | None  # (positions, d_model): GPT-2's learned absolute positions, else None
    rotary: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin (positions, rot), in HF's rotate-half convention
    layers: list[LayerWeights]
    final_norm: Norm
    unembed: torch.Tensor  # (vocab, d_model)
    n_head: int
    n_kv_head: int
    head_dim: int
    scale: float  # attention logits are q.k * scale
    parallel_residual: bool  # GPT-NeoX: x + attn(norm1 x) + mlp(norm2 x)

    @property
    def context(self) -> int:
        table = self.positions if self.positions is not None else self.rotary[0]
        return table.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype


ACTIVATION_KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "NewGELUActivation": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's gelu_new, in one kernel
    "GELUTanh": lambda x: F.gelu(x, approximate="tanh"),  # the same, as `models.fuse_activations` leaves it
    "GELUActivation": F.gelu,
    "SiLUActivation": F.silu,
    "SiLU": F.silu,
}
"""HF activation class -> the same function as one torch kernel; other activations run as the model's own module."""


def _activation(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return ACTIVATION_KERNELS.get(type(module).__name__, module)


def _layer_norm(module: torch.nn.Module) -> Norm:
    return Norm(module.weight, module.bias, float(module.eps))


LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")
"""Rotary scalings whose tables depend on the sequence length: one table for every position would be wrong."""


def _rotary_tables(rotary_emb: torch.nn.Module, context: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own cos and sin at positions 0..context-1 -> two (context, rot) tensors."""
    rope_type = getattr(rotary_emb, "rope_type", "default")
    if rope_type in LENGTH_DEPENDENT_ROPE:
        raise UnsupportedModel(f"rotary scaling {rope_type!r} depends on the sequence length")
    positions = torch.arange(context, device=like.device)[None, :]
    cos, sin = rotary_emb(like, positions)  # (1, context, rot) each
    return cos[0].to(like.dtype), sin[0].to(like.dtype)


def read_gpt2(model: torch.nn.Module) -> DecoderWeights:
    config, body = model.config, model.transformer
    if config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn:
        raise UnsupportedModel("GPT-2 with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn")
    layers = [
        LayerWeights(
            attn_norm=_layer_norm(block.ln_1),
            qkv=block.attn.c_attn.weight.t().contiguous(),  # Conv1D stores (in, out)
            qkv_bias=block.attn.c_attn.bias,
            out=block.attn.c_proj.weight.t().contiguous(),
            out_bias=block.attn.c_proj.bias,
            mlp_norm=_layer_norm(block.ln_2),
            up=block.mlp.c_fc.weight.t().contiguous(),
            up_bias=block.mlp.c_fc.bias,
            gate=None,
            gate_bias=None,
            down=block.mlp.c_proj.weight.t().contiguous(),
            down_bias=block.mlp.c_proj.bias,
            act=_activation(block.mlp.act),
        )
        for block in body.h
    ]
    attn = body.h[0].attn
    return DecoderWeights(
        embed=body.wte.weight,
        positions=body.wpe.weight,
        rotary=None,
        layers=layers,
        final_norm=_layer_norm(body.ln_f),
        unembed=model.get_output_embeddings().weight,
        n_head=attn.num_heads,
        n_kv_head=attn.num_heads,
        head_dim=attn.head_dim,
        scale=float(attn.scaling),
        parallel_residual=False,
    )


def _concat_bias(*linears: torch.nn.Linear) -> torch.Tensor | None:
    if all(linear.bias is None for linear in linears):
        return None
    return torch.cat([linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features) for linear in linears])


def read_llama(model: torch.nn.Module) -> DecoderWeights:
    body = model.model
    rms = lambda module: Norm(module.weight, None, float(module.variance_epsilon), rms=True)  # noqa: E731
    layers = []
    for block in body.layers:
        attn, mlp = block.self_attn, block.mlp
        layers.append(
            LayerWeights(
                attn_norm=rms(block.input_layernorm),
                qkv=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                qkv_bias=_concat_bias(attn.q_proj, attn.k_proj, attn.v_proj),
                out=attn.o_proj.weight,
                out_bias=attn.o_proj.bias,
                mlp_norm=rms(block.post_attention_layernorm),
                up=mlp.up_proj.weight,
                up_bias=mlp.up_proj.bias,
                gate=mlp.gate_proj.weight,
                gate_bias=mlp.gate_proj.bias,
                down=mlp.down_proj.weight,
                down_bias=mlp.down_proj.bias,
                act=_activation(mlp.act_fn),
            )
        )
    attn = body.layers[0].self_attn
    n_head = model.config.num_attention_heads
    return DecoderWeights(
        embed=body.embed_tokens.weight,
        positions=None,
        rotary=_rotary_tables(body.rotary_emb, model.config.max_position_embeddings, body.embed_tokens.weight),
        layers=layers,
        final_norm=rms(body.norm),
        unembed=model.get_output_embeddings().weight,
        n_head=n_head,
        n_kv_head=n_head // attn.num_key_value_groups,
        head_dim=attn.head_dim,
        scale=float(attn.scaling),
        parallel_residual=False,
    )


def _neox_qkv(linear: torch.nn.Linear, n_head: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GPT-NeoX interleaves q, k, v per head ((n_head, 3, head_dim) output rows): regroup to q rows, k rows, v rows."""
    d_in = linear.weight.shape[1]
    weight = linear.weight.view(n_head, 3, head_dim, d_in).transpose(0, 1).reshape(3 * n_head * head_dim, d_in)
    bias = None if linear.bias is None else linear.bias.view(n_head, 3, head_dim).transpose(0, 1).reshape(-1)
    return weight, bias


def read_gpt_neox(model: torch.nn.Module) -> DecoderWeights:
    body, config = model.gpt_neox, model.config
    attn = body.layers[0].attention
    n_head = config.num_attention_heads
    layers = []
    for block in body.layers:
        qkv, qkv_bias = _neox_qkv(block.attention.query_key_value, n_head, attn.head_size)
        layers.append(
            LayerWeights(
                attn_norm=_layer_norm(block.input_layernorm),
                qkv=qkv,
                qkv_bias=qkv_bias,
                out=block.attention.dense.weight,
                out_bias=block.attention.dense.bias,
                mlp_norm=_layer_norm(block.post_attention_layernorm),
                up=block.mlp.dense_h_to_4h.weight,
                up_bias=block.mlp.dense_h_to_4h.bias,
                gate=None,
                gate_bias=None,
                down=block.mlp.dense_4h_to_h.weight,
                down_bias=block.mlp.dense_4h_to_h.bias,
                act=_activation(block.mlp.act),
            )
        )
    return DecoderWeights(
        embed=body.embed_in.weight,
        positions=None,
        rotary=_rotary_tables(body.rotary_emb, config.max_position_embeddings, body.embed_in.weight),
        layers=layers,
        final_norm=_layer_norm(body.final_layer_norm),
        unembed=model.get_output_embeddings().weight,
        n_head=n_head,
        n_kv_head=n_head,
        head_dim=attn.head_size,
        scale=float(attn.scaling),
        parallel_residual=bool(config.use_parallel_residual),
    )


READERS: dict[str, Callable[[torch.nn.Module], DecoderWeights]] = {
    "GPT2LMHeadModel": read_gpt2,
    "LlamaForCausalLM": read_llama,
    "GPTNeoXForCausalLM": read_gpt_neox,
}
"""HF causal-LM class name -> reader. Anything else is decoded by `models.sample`."""


def _hooked_modules(model: torch.nn.Module) -> list[str]:
    """Modules with forward hooks other than transformers' own output capturing: hooks (steering, patching, Captum,
    TransformerLens) change what the model computes, and the lean decoder would silently skip them."""
    hooked = []
    for name, module in model.named_modules():
        hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        if any(not (getattr(hook, "__module__", None) or "").startswith("transformers.") for hook in hooks):
            hooked.append(name or type(model).__name__)
    return hooked


DROPOUT_SETTINGS = ("attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop")
"""Config fields HF models read as dropout probabilities in train mode (Llama's attention dropout is no module)."""


def _dropout_on(model: torch.nn.Module) -> bool:
    modules = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    return modules or any(float(getattr(model.config, name, 0.0) or 0.0) > 0 for name in DROPOUT_SETTINGS)


def read_weights(model: torch.nn.Module) -> DecoderWeights:
    """The decoder's weights of `model`; raises UnsupportedModel for an architecture or option it does not run."""
    reader = READERS.get(type(model).__name__)
    if reader is None:
        raise UnsupportedModel(f"{type(model).__name__} (the lean decoder runs {', '.join(sorted(READERS))})")
    hooked = _hooked_modules(model)
    if hooked:
        raise UnsupportedModel(f"forward hooks on {', '.join(hooked[:3])}{' ...' if len(hooked) > 3 else ''} would be skipped")
    if model.training and _dropout_on(model):
        raise UnsupportedModel(f"{type(model).__name__} is in train mode with dropout on; call .eval() first")
    with torch.no_grad():
        return reader(model)


def cast_weights(weights: DecoderWeights, dtype: torch.dtype) -> DecoderWeights:
    """The same decoder with every floating-point tensor in `dtype` (copies; bf16 on CUDA)."""
    if weights.dtype == dtype:
        return weights

    def cast(value):
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, (list, tuple)):
            return type(value)(cast(item) for item in value)
        if dataclasses.is_dataclass(value):
            return dataclasses.replace(value, **{f.name: cast(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return value

    return cast(weights)
