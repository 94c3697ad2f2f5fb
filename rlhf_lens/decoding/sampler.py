"""`sample`: `models.sample`'s samples, drawn by the lean decoder.

The loop keeps a preallocated key/value cache, runs the prompts shared by several rows once (a GRPO group's G
completions share their prompt), drops finished rows from the batch as they end, and draws each row's noise from
that row's own generator, as `models.sample` does: a sample depends only on its prompt and seed, never on the batch
it was drawn in. Models the decoder does not run are sampled by `models.sample`, with a logged note.

Shape glossary: batch (rows still decoding), rows (all prompts), width (padded prompt length), slots
(width + max_new_tokens), vocab.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf_lens import models
from rlhf_lens.decoding.forward import attention_bias, block, embed, final_logits, rotary_at
from rlhf_lens.decoding.graphs import StaticDecodeStep
from rlhf_lens.decoding.weights import DecoderWeights, UnsupportedModel, cast_weights, read_weights

__all__ = ["sample"]

log = logging.getLogger(__name__)
_noted: set[str] = set()

NOISE_STEPS = 8
"""Steps of noise drawn at once per row: few enough that rows which end early waste little, many enough that the
per-row generator calls are rare."""
NOISE_BUDGET = 1 << 24
"""Most uniform draws held at once (64 MB of float32)."""


@dataclass
class DecodeState:
    """The rows still decoding: their cache, which keys they may attend, and where they are."""

    rows: torch.Tensor  # (batch,) index of each row among all prompts
    cache: list[tuple[torch.Tensor, torch.Tensor]]  # per layer keys, values: (batch, n_kv_head, slots, head_dim)
    key_valid: torch.Tensor  # (batch, slots) bool: False on left padding
    next_position: torch.Tensor  # (batch,) position id of each row's next token
    next_slot: int  # cache slot of the next token (the same for every row: prompts are left-padded)


class RowNoise:
    """Gumbel noise of each row from the row's own generator, as `models.sample` draws it, several steps at a time."""

    def __init__(self, seeds: Sequence[int], vocab: int, max_steps: int):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.vocab = vocab
        self.steps_per_draw = max(1, min(max_steps, NOISE_STEPS, NOISE_BUDGET // max(1, len(seeds) * vocab)))
        self.drawn = torch.empty(0)  # (len(drawn_rows), steps_per_draw, vocab)
        self.drawn_rows: dict[int, int] = {}
        self.offset = self.steps_per_draw

    def next(self, rows: list[int], device: torch.device) -> torch.Tensor:
        """The next step's noise of these rows -> (len(rows), vocab). Rows only ever leave, so every row's generator
        has advanced by the same number of steps."""
        if self.offset == self.steps_per_draw:
            uniform = torch.stack([torch.rand(self.steps_per_draw, self.vocab, generator=self.generators[r]) for r in rows])
            self.drawn = models.gumbel(uniform.to(device))
            self.drawn_rows = {r: i for i, r in enumerate(rows)}
            self.offset = 0
        at = torch.tensor([self.drawn_rows[r] for r in rows], device=self.drawn.device)
        self.offset += 1
        return self.drawn[at, self.offset - 1]


def _new_cache(weights: DecoderWeights, batch: int, slots: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed, not empty: a masked-out slot still meets a zero attention weight, and 0 * NaN would be NaN."""
    shape = (batch, weights.n_kv_head, slots, weights.head_dim)
    return [
        (torch.zeros(shape, dtype=weights.dtype, device=device), torch.zeros(shape, dtype=weights.dtype, device=device))
        for _ in weights.layers
    ]


def prefill(
    weights: DecoderWeights, prompts: list[list[int]], pad_id: int, max_new_tokens: int, device
) -> tuple[DecodeState, torch.Tensor]:
    """Run each distinct prompt once and give every row its prompt's cache -> state, last-position logits (rows, vocab)."""
    distinct = list(dict.fromkeys(tuple(p) for p in prompts))
    number = {key: n for n, key in enumerate(distinct)}
    which = torch.tensor([number[tuple(p)] for p in prompts], device=device) if len(distinct) < len(prompts) else None
    ids, mask = models.pad_left([list(p) for p in distinct], pad_id)
    ids, mask = ids.to(device), mask.to(device).bool()  # (distinct, width)
    width = ids.shape[1]
    positions = models.position_ids(mask.long())
    key_valid = torch.cat([mask, torch.ones((len(distinct), max_new_tokens), dtype=torch.bool, device=device)], dim=1)
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    # A left-padding query attends only itself, so that no row of the attention is empty (NaN); its output is unused.
    allowed = (causal & mask[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)  # (distinct, width, width)
    attend = attention_bias(allowed[:, None], weights.dtype)  # (distinct, 1, width, width)
    cache = _new_cache(weights, len(distinct), width + max_new_tokens, device)
    x, rotary = embed(weights, ids, positions), rotary_at(weights, positions)
    for layer, layer_cache in zip(weights.layers, cache):
        x = block(weights, layer, x, rotary, layer_cache, 0, attend)
    logits = final_logits(weights, x[:, -1])  # (distinct, vocab)
    next_position = positions[:, -1] + 1
    if which is not None:  # one cache row per sample
        cache = [(k.index_select(0, which), v.index_select(0, which)) for k, v in cache]
        key_valid, next_position, logits = key_valid[which], next_position[which], logits[which]
    rows = torch.arange(len(prompts), device=device)
    return DecodeState(rows, cache, key_valid, next_position, width), logits


def decode_step(weights: DecoderWeights, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row (batch,) and advance the state -> next logits (batch, vocab)."""
    positions = state.next_position[:, None]  # (batch, 1)
    x, rotary = embed(weights, tokens[:, None], positions), rotary_at(weights, positions)
    slot = state.next_slot
    attend = attention_bias(state.key_valid[:, None, None, : slot + 1], weights.dtype)  # (batch, 1, 1, slot + 1)
    for layer, layer_cache in zip(weights.layers, state.cache):
        x = block(weights, layer, x, rotary, layer_cache, slot, attend)
    state.next_position = state.next_position + 1
    state.next_slot = slot + 1
    return final_logits(weights, x[:, 0])


def keep_rows(state: DecodeState, keep: torch.Tensor) -> DecodeState:
    """The state of the rows where keep (batch,) is True: finished rows stop costing compute."""
    at = keep.nonzero().squeeze(-1)
    cache = [(k.index_select(0, at), v.index_select(0, at)) for k, v in state.cache]
    return DecodeState(state.rows[at], cache, state.key_valid[at], state.next_position[at], state.next_slot)


def _note_fallback(model: torch.nn.Module, reason: UnsupportedModel) -> None:
    if type(model).__name__ not in _noted:
        _noted.add(type(model).__name__)
        log.warning("rlhf_lens.decoding: sampling %s with models.sample (the HF forward): %s", type(model).__name__, reason)


def _bf16_autocast_on_cuda() -> bool:
    try:
        return torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
    except (TypeError, AttributeError):  # torch < 2.4 takes no device type and answers for CUDA
        return torch.is_autocast_enabled() and torch.get_autocast_gpu_dtype() == torch.bfloat16


def compute_dtype(weights: DecoderWeights) -> torch.dtype:
    """bf16 on CUDA under bf16 autocast (as the trainer's CUDA passes run), else the weights' own dtype."""
    if weights.embed.device.type == "cuda" and _bf16_autocast_on_cuda():
        return torch.bfloat16
    return weights.dtype


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    with_logprobs: bool = False,
    cuda_graphs: bool = True,
) -> models.Samples:
    """`models.sample`'s samples for the same prompts and seeds (its arguments, its checks and its `Samples`), drawn
    by the lean decoder; a model it does not run is sampled by `models.sample`.

    On CUDA under bf16 autocast the decoder runs in bf16, and with `cuda_graphs` each decode step is one CUDA graph
    replay (`graphs.StaticDecodeStep`); in bf16 the samples follow the bf16 model, not `models.sample`'s float32 one.
    """
    try:
        weights = read_weights(model)
    except UnsupportedModel as reason:
        _note_fallback(model, reason)
        return models.sample(
            model,
            tokenizer,
            prompt_ids,
            seeds,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            with_logprobs=with_logprobs,
        )
    models.check_sampling_arguments(prompt_ids, seeds, temperature, top_k, with_logprobs)
    prompts = models.fit_prompts(model, prompt_ids, max_new_tokens, tokenizer.eos_token_id)
    weights = cast_weights(weights, compute_dtype(weights))
    graphed = cuda_graphs and weights.embed.device.type == "cuda" and max_new_tokens > 1  # 1 token: no decode step
    draw = Draw(temperature, top_k, with_logprobs)
    with torch.autocast(weights.embed.device.type, enabled=False):
        return _decode(weights, tokenizer, prompts, seeds, max_new_tokens, draw, graphed=graphed)


@dataclass(frozen=True)
class Draw:
    """How tokens are drawn from the logits, and whether their log-probabilities are kept."""

    temperature: float
    top_k: int | None
    with_logprobs: bool


def _decode(
    weights: DecoderWeights, tokenizer, prompts: list[list[int]], seeds: Sequence[int], max_new_tokens: int, draw: Draw, *, graphed: bool
) -> models.Samples:
    """The decode loop: prefill, then draw a token per live row and feed it back, up to `max_new_tokens`."""
    device = weights.embed.device
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    new_tokens = torch.full((len(prompts), max_new_tokens), pad_id, dtype=torch.long, device=device)  # (rows, max_new_tokens)
    logprobs = torch.zeros((len(prompts), max_new_tokens), device=device) if draw.with_logprobs else None
    entropy = torch.zeros_like(logprobs) if draw.with_logprobs else None
    noise = RowNoise(seeds, weights.unembed.shape[0], max_new_tokens) if draw.temperature > 0 else None
    state, logits = prefill(weights, prompts, pad_id, max_new_tokens, device)
    static = StaticDecodeStep(weights, state.cache, state.key_valid, state.next_position, state.next_slot) if graphed else None
    rows = state.rows.tolist()
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)  # (batch,) the row has drawn EOS
    for t in range(max_new_tokens):
        tokens = models.choose_tokens(logits, noise.next(rows, device) if noise else None, draw.temperature, draw.top_k)  # (batch,)
        new_tokens[state.rows, t] = tokens
        if logprobs is not None:
            logprobs[state.rows, t], entropy[state.rows, t] = models.drawn_logprobs(logits, tokens, draw.temperature)
        done = done | (tokens == eos_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if static is not None:  # static shapes: finished rows stay in the batch
            logits = static(tokens)
            continue
        if int(done.sum()) >= max(1, len(done) // 4):  # compact once a quarter of the rows have ended
            live = ~done
            state, tokens, done = keep_rows(state, live), tokens[live], done[live]
            rows = state.rows.tolist()
        logits = decode_step(weights, state, tokens)
    return _samples_to_first_eos(tokenizer, prompts, new_tokens, logprobs, entropy)


def _samples_to_first_eos(tokenizer, prompts, new_tokens: torch.Tensor, logprobs, entropy) -> models.Samples:
    """Rows that ended since the last compaction kept drawing: pad after each row's first EOS (zero log-probability and
    entropy there), as `models.sample` leaves them."""
    eos = (new_tokens == tokenizer.eos_token_id).long()
    after_eos = (eos.cumsum(1) - eos) > 0  # (rows, max_new_tokens)
    new_tokens = new_tokens.masked_fill(after_eos, tokenizer.pad_token_id)
    if logprobs is not None:
        logprobs, entropy = logprobs.masked_fill(after_eos, 0.0), entropy.masked_fill(after_eos, 0.0)
    return models.samples_from(tokenizer, prompts, new_tokens, logprobs, entropy)
