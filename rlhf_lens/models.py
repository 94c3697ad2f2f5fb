"""Model loading and the model math both the trainer and the analyses need.

Everything here is a small pure-ish function over HF models and token ids:
padding, seeded sampling, per-token log-probabilities, per-token KL and
context-fitting. The trainer and the analyses share these so that "logprob"
means the same thing on both sides of the run directory.

Shape glossary: batch, seq, gen_len, vocab, d_model.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CRITIQUE_MAX_TOKENS",
    "ModelLoadError",
    "Samples",
    "check_vocab_fits",
    "completion_logprobs",
    "context_length",
    "exact_kl_per_token",
    "encode_prompts",
    "fit_to_context",
    "kl_per_token",
    "load_causal_lm",
    "load_reward_function",
    "load_tokenizer",
    "pad_left",
    "pad_right",
    "sample",
    "sequence_logprobs",
]


class ModelLoadError(ValueError):
    """A model folder cannot be loaded safely or does not match its tokenizer."""


# --------------------------------------------------------------------------- loading


def load_causal_lm(folder: str | Path) -> torch.nn.Module:
    """Load a local causal LM in eval mode; safetensors only, pickled weights are refused."""
    from rlhf_lens.runs import load_hf_folder

    return load_hf_folder(folder, "causal_lm")


FUSED_ACTIVATIONS = {"NewGELUActivation": "gelu_pytorch_tanh"}
"""HF activation modules computed op by op -> the transformers activation that computes the same function in one torch
kernel. GPT-2's gelu_new, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), is seven kernels forward and as many autograd
nodes; F.gelu(approximate="tanh") is one, equal to 5e-7."""


def fuse_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Swap each activation module of FUSED_ACTIVATIONS for its one-kernel form, in place; the config (what
    save_pretrained writes) is untouched. Every loaded and every freshly built model gets this."""
    from transformers.activations import ACT2FN

    for module in list(model.modules()):
        for name, child in module.named_children():
            fused = FUSED_ACTIVATIONS.get(type(child).__name__)
            if fused is not None:
                setattr(module, name, ACT2FN[fused])
    return model


def load_tokenizer(folder: str | Path):
    """Load the tokenizer saved in a local folder, with a pad token set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts as every stage sees them: BOS (= EOS for GPT-2-style tokenizers) + text."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [[bos] + ids for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]


def check_vocab_fits(model: torch.nn.Module, tokenizer, *, where: str = "model") -> None:
    """Refuse a tokenizer whose ids would index past the model's embedding table."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
            f"only {rows} rows, so some token ids have no embedding. Use the tokenizer the model was "
            "trained with, or resize the model with model.resize_token_embeddings(len(tokenizer))."
        )


def context_length(model: torch.nn.Module) -> int:
    """The largest number of positions the model accepts."""
    config = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelLoadError(f"{type(model).__name__}: config names no context length (n_positions).")


def fit_to_context(ids: Sequence[int], budget: int) -> list[int]:
    """Keep the last `budget` ids (left truncation keeps the end of a prompt)."""
    if budget <= 0:
        raise ValueError(f"context budget must be positive, got {budget}")
    return list(ids[-budget:])


# --------------------------------------------------------------------------- padding


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad for generation: -> ids (batch, seq), attention_mask (batch, seq)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad for scoring: -> ids (batch, seq), attention_mask (batch, seq)."""
    width = max(max(len(s) for s in seqs), 1)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 at each row's first real token."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (batch, seq)


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Samples:
    """Completions sampled for a batch of prompts.

    `completion_ids[i]` includes the EOS token when `finished[i]` is True.
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    finished: list[bool]
    texts: list[str]
    logprobs: torch.Tensor | None = None
    """(batch, max_new_tokens) log-probability of each drawn token under softmax(logits / temperature), the
    distribution it was drawn from (0 after a row's completion ends); None unless asked for, and at temperature 0."""
    entropy: torch.Tensor | None = None
    """(batch, max_new_tokens) entropy of that distribution at each completion position (0 after the end)."""


def _cache_keyword(model: torch.nn.Module) -> str:
    # transformers 5.x renamed `past_key_values` to `cache`; older releases take the former.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def check_sampling_arguments(
    prompt_ids: Sequence, seeds: Sequence[int], temperature: float, top_k: int | None, with_logprobs: bool
) -> None:
    """The checks every sampler makes before drawing anything."""
    if with_logprobs and (temperature == 0 or top_k is not None):
        raise ValueError("with_logprobs needs temperature > 0 and no top_k: the tokens are then drawn from softmax(logits / T)")
    if len(prompt_ids) != len(seeds):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def fit_prompts(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int) -> list[list[int]]:
    """Prompts as a sampler feeds them: an empty one becomes [EOS], a long one keeps its last tokens so that
    `max_new_tokens` more fit in the context."""
    budget = context_length(model) - max_new_tokens
    return [fit_to_context(p, budget) if len(p) else [eos_id] for p in prompt_ids]


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniform noise of the same shape."""
    return uniform.clamp(1e-20, 1.0 - 1e-7).log_().neg_().log_().neg_()  # -log(-log(u)), in place on the clamped copy


def choose_tokens(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float, top_k: int | None) -> torch.Tensor:
    """The drawn token of each row: logits (batch, vocab) float32, noise (batch, vocab) Gumbel -> (batch,).

    Gumbel-max: argmax(logits / T + G) is distributed as softmax(logits / T); temperature 0 is greedy (noise unused).
    """
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature == 0:
        return logits.argmax(-1)
    return (logits / temperature + noise).argmax(-1)


def drawn_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each drawn token and the entropy of the distribution it was drawn from, softmax(logits / T):
    logits (batch, vocab), tokens (batch,) -> two (batch,)."""
    logp = torch.log_softmax(logits / temperature, dim=-1)  # (batch, vocab)
    return logp.gather(-1, tokens[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def samples_from(
    tokenizer,
    prompts: list[list[int]],
    new_tokens: torch.Tensor,
    logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> Samples:
    """`Samples` from the drawn tokens (batch, max_new_tokens), pad after each row's EOS: completions end at EOS."""
    eos_id = tokenizer.eos_token_id
    completions, finished = [], []
    for row in new_tokens.tolist():
        ended = eos_id in row
        completions.append(row[: row.index(eos_id) + 1] if ended else row)
        finished.append(ended)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Samples(
        prompt_ids=[list(p) for p in prompts],
        completion_ids=completions,
        finished=finished,
        texts=texts,
        logprobs=logprobs,
        entropy=entropy,
    )


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
) -> Samples:
    """Sample one completion per prompt; sample i depends only on (prompt i, seeds[i]).

    Each row draws its Gumbel noise from its own generator, so a sample does not
    change with batch size, batch order or the number of processes. Prompts are
    left-padded; prompts too long for the context keep their last tokens.
    `with_logprobs` keeps each drawn token's log-probability and each position's entropy
    (`Samples.logprobs`, `.entropy`): the policy's own figures at sampling time, with no second pass.
    This is the reference sampler, through the HF model's own forward; `rlhf_lens.decoding.sample` draws the
    same samples faster.
    """
    check_sampling_arguments(prompt_ids, seeds, temperature, top_k, with_logprobs)
    device = next(model.parameters()).device
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = fit_prompts(model, prompt_ids, max_new_tokens, eos_id)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    ids, mask = pad_left(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = position_ids(mask)
    cache_kw, cache = _cache_keyword(model), None
    batch = len(prompts)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    kept_logprobs = torch.zeros((batch, max_new_tokens), device=device) if with_logprobs else None
    kept_entropy = torch.zeros((batch, max_new_tokens), device=device) if with_logprobs else None
    step_ids, step_pos = ids, positions
    for t in range(max_new_tokens):
        kwargs = {cache_kw: cache} if cache is not None else {}
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True, **kwargs)
        cache = _returned_cache(out)
        logits = out.logits[:, -1, :].float()  # (batch, vocab)
        noise = None
        if temperature > 0:  # each row's noise from its own generator
            noise = gumbel(torch.stack([torch.rand(logits.shape[-1], generator=g) for g in generators]).to(device))
        token = choose_tokens(logits, noise, temperature, top_k)  # (batch,)
        if with_logprobs:
            live = (~done).float()
            logprob, entropy = drawn_logprobs(logits, token, temperature)
            kept_logprobs[:, t], kept_entropy[:, t] = logprob * live, entropy * live
        token = torch.where(done, torch.full_like(token, pad_id), token)
        new_tokens[:, t] = token
        done |= token == eos_id
        if bool(done.all()):
            break
        step_ids = token[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
    return samples_from(tokenizer, prompts, new_tokens, kept_logprobs, kept_entropy)


# --------------------------------------------------------------------------- log-probabilities


def completion_positions(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], seq_len: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each completion token is predicted in the right-padded prompt+completion rows.

    Token j of completion i sits at position len(p_i)+j and is predicted at position
    len(p_i)+j-1. Returns predict_at (batch, gen_len) and completion_mask (batch, gen_len).
    """
    gen_len = max(max(len(c) for c in completion_ids), 1)
    starts = torch.tensor([len(p) - 1 for p in prompt_ids], device=device)  # (batch,)
    offsets = torch.arange(gen_len, device=device)  # (gen_len,)
    lengths = torch.tensor([len(c) for c in completion_ids], device=device)
    completion_mask = offsets[None, :] < lengths[:, None]  # (batch, gen_len)
    predict_at = (starts[:, None] + offsets[None, :]).clamp(max=seq_len - 1)  # (batch, gen_len)
    return predict_at, completion_mask


def completion_logits(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits that predict each completion token.

    Returns logits (batch, gen_len, vocab), targets (batch, gen_len) and
    completion_mask (batch, gen_len); completions are right-padded to gen_len.
    Differentiable: wrap in torch.no_grad() when no gradient is needed.
    """
    device = next(model.parameters()).device
    sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    ids, mask = pad_right(sequences, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits  # (batch, seq, vocab)
    predict_at, completion_mask = completion_positions(prompt_ids, completion_ids, ids.shape[1], device)
    batch, gen_len, vocab = len(sequences), predict_at.shape[1], logits.shape[-1]
    picked = torch.gather(logits, 1, predict_at[:, :, None].expand(batch, gen_len, vocab))
    target_at = (predict_at + 1).clamp(max=ids.shape[1] - 1)
    targets = torch.gather(ids, 1, target_at)
    targets = torch.where(completion_mask, targets, torch.zeros_like(targets))
    return picked, targets, completion_mask


class TokenValues(torch.nn.Module):
    """A sequence-classification model read at every position: its scalar head (`score`) applied to
    each hidden state of its backbone, as in TRL's PPO value model. forward -> values (batch, seq)."""

    def __init__(self, score_model: torch.nn.Module):
        super().__init__()
        self.model = score_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        backbone = getattr(self.model, self.model.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state  # (batch, seq, d_model)
        return self.model.score(hidden).squeeze(-1).float()  # (batch, seq)


def completion_values(
    value_model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> torch.Tensor:
    """Per-token values V(state before completion token j) of a `TokenValues` model: -> (batch, gen_len).

    Padding positions hold 0. Differentiable.
    """
    device = next(value_model.parameters()).device
    sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    ids, mask = pad_right(sequences, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    values = value_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))  # (batch, seq)
    predict_at, completion_mask = completion_positions(prompt_ids, completion_ids, ids.shape[1], device)
    return torch.gather(values, 1, predict_at) * completion_mask


def completion_logprobs(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(completion token | prefix): -> logprobs (batch, gen_len), completion_mask.

    Padding positions hold 0. Every prompt must have at least one token.
    """
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (prepend BOS/EOS to an empty prompt)")
    logits, targets, completion_mask = completion_logits(model, prompt_ids, completion_ids, pad_id)
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, :, None]).squeeze(-1)
    return logprobs * completion_mask, completion_mask


def sequence_logprobs(logprobs: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token logprobs over the completion: (batch, gen_len) -> (batch,)."""
    return (logprobs * completion_mask).sum(-1)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 estimator log p - log q of KL(p || q) at the sampled tokens; unbiased, can be negative.

    (batch, gen_len) -> (batch, gen_len). See J. Schulman, "Approximating KL divergence" (2020).
    """
    return logprobs - ref_logprobs


def exact_kl_per_token(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) over the vocabulary at each position: (..., vocab) -> (...); always >= 0."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


# --------------------------------------------------------------------------- reward scoring


def reward_input_parts(tokenizer, prompts: Sequence[str], completions: Sequence[str], context: int) -> list[tuple[list[int], list[int]]]:
    """(BOS + prompt, completion) token ids of each text, as every reward model reads them.

    A text longer than `context` loses tokens from the left (with a warning) so that the
    completion, the thing being judged, survives; the prefix is cut first.
    """
    prefixes = encode_prompts(tokenizer, prompts)
    suffixes = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    too_long = sum(len(p) + len(c) > context for p, c in zip(prefixes, suffixes))
    if too_long:
        warnings.warn(
            f"{too_long} prompt+completion sequence(s) exceed the reward model's context of {context} tokens; "
            "truncated from the left so the completions survive.",
            stacklevel=3,
        )
    return [fit_parts_to_context(p, c, context) for p, c in zip(prefixes, suffixes)]


def fit_parts_to_context(prefix: list[int], suffix: list[int], budget: int) -> tuple[list[int], list[int]]:
    """`fit_to_context(prefix + suffix, budget)` split back into what is left of the prefix and of the suffix."""
    if budget <= 0:
        raise ValueError(f"context budget must be positive, got {budget}")
    excess = len(prefix) + len(suffix) - budget
    if excess <= 0:
        return prefix, suffix
    return prefix[excess:], suffix[max(0, excess - len(prefix)) :]


def reward_input_ids(tokenizer, prompts: Sequence[str], completions: Sequence[str], context: int) -> list[list[int]]:
    """BOS + prompt + completion token ids, as every reward model reads them (see `reward_input_parts`)."""
    return [p + c for p, c in reward_input_parts(tokenizer, prompts, completions, context)]


def require_score_head(reward_model: torch.nn.Module) -> None:
    """Rewards are read from a decoder's `*ForSequenceClassification` model: its backbone and `score` head."""
    if not isinstance(getattr(reward_model, "score", None), torch.nn.Module):
        raise TypeError(
            f"{type(reward_model).__name__} has no `score` head; rewards are read from a decoder's "
            "*ForSequenceClassification model (GPT-2, Llama, GPT-NeoX), as `build_model` and the reward stage make them."
        )


def rewards_at(reward_model: torch.nn.Module, last_hidden: torch.Tensor) -> torch.Tensor:
    """The score head on each text's last hidden state, minus the centring offset: (n, d_model) -> (n,).

    The centring offset stored in the config (`reward_offset`, set by the trainer) is subtracted.
    """
    return reward_model.score(last_hidden)[:, 0].float() - float(getattr(reward_model.config, "reward_offset", 0.0))


def score_rewards(reward_model: torch.nn.Module, input_ids: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Scalar rewards of a sequence-classification reward model: -> (batch,).

    Right padding; each text is scored at its last token as the attention mask says, not at the last
    token that differs from the pad id as HF's own pooling does, so a text that holds the pad/EOS id
    literally is scored where packed batches (`packing.packed_rewards`) score it.
    Differentiable: wrap in torch.no_grad() when no gradient is needed.
    """
    require_score_head(reward_model)
    device = next(reward_model.parameters()).device
    ids, mask = pad_right(input_ids, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    hidden = reward_model.base_model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)
    ).last_hidden_state  # (batch, seq, d_model)
    last = mask.sum(1) - 1  # (batch,)
    return rewards_at(reward_model, hidden[torch.arange(len(ids), device=device), last])


@torch.no_grad()
def score_texts(
    reward_model: torch.nn.Module, tokenizer, prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 64
) -> torch.Tensor:
    """Rewards of (prompt, completion) pairs, `batch_size` texts per pass: -> (n,).

    The texts of one prompt are packed after a single copy of it (`packing.packed_rewards`): the values of a padded
    pass (`score_rewards`) to float rounding, for about half the tokens when a prompt has several completions.
    """
    from rlhf_lens.packing import ROW_WIDTH, pack_texts, packed_rewards  # packing builds on this module

    context = context_length(reward_model)
    parts = reward_input_parts(tokenizer, prompts, completions, context)
    pad_id = tokenizer.pad_token_id
    chunks = [
        packed_rewards(reward_model, pack_texts(parts[i : i + batch_size], pad_id, max_segment=max(ROW_WIDTH, context)))
        for i in range(0, len(parts), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0)


# --------------------------------------------------------------------------- generative reward models
# A generative reward model is a causal LM fine-tuned to continue
#   prompt + completion + "\nCritique: <critique>\nVerdict: good|bad" + EOS.
# Its reward is log p(" good") - log p(" bad") at the verdict, after its own greedy
# critique or, with critique=False, directly after the completion.

CRITIQUE_MARK = "\nCritique:"
VERDICT_MARK = "\nVerdict:"
VERDICTS = (" good", " bad")


def verdict_prefix(prompt: str, completion: str, critique: str | None) -> str:
    """The text after which a generative reward model states its verdict."""
    body = prompt + completion
    if critique is not None:
        body += CRITIQUE_MARK + " " + critique.strip()
    return body + VERDICT_MARK


def write_critiques(
    model: torch.nn.Module, tokenizer, prompts: Sequence[str], completions: Sequence[str], *, max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """Greedy critiques of (prompt, completion) pairs, cut where the model starts its verdict."""
    critiques: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [p + c + CRITIQUE_MARK for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size])]
        out = sample(model, tokenizer, encode_prompts(tokenizer, texts), [0] * len(texts), max_new_tokens=max_new_tokens, temperature=0.0)
        critiques.extend(text.split(VERDICT_MARK.strip())[0].strip() for text in out.texts)
    return critiques


@torch.no_grad()
def generative_rewards(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    critiques: Sequence[str] | None,
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """log p(verdict good) - log p(verdict bad) per pair: -> (n,). `critiques=None` skips the critique."""
    prefixes = [verdict_prefix(p, c, None if critiques is None else critiques[i]) for i, (p, c) in enumerate(zip(prompts, completions))]
    prefix_ids = [fit_to_context(ids, context_length(model) - 4) for ids in encode_prompts(tokenizer, prefixes)]
    good, bad = (tokenizer(v, add_special_tokens=False)["input_ids"] for v in VERDICTS)
    rewards = []
    for start in range(0, len(prefix_ids), batch_size):
        chunk = prefix_ids[start : start + batch_size]
        lp_good, mask_good = completion_logprobs(model, chunk, [good] * len(chunk), tokenizer.pad_token_id)
        lp_bad, mask_bad = completion_logprobs(model, chunk, [bad] * len(chunk), tokenizer.pad_token_id)
        rewards.append(sequence_logprobs(lp_good, mask_good) - sequence_logprobs(lp_bad, mask_bad))
    offset = float(getattr(model.config, "reward_offset", 0.0))
    return (torch.cat(rewards) if rewards else torch.zeros(0)) - offset


def judge_texts(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    critique_first: bool,
    critique_max_tokens: int,
) -> torch.Tensor:
    """Rewards of a generative reward model read as it was trained: -> (n,).

    With `critique_first`, the model first writes its own greedy critique of at most
    `critique_max_tokens` tokens (the reward stage's `critique_max_tokens`, recorded in the
    checkpoint's meta.json), then the reward is the verdict log-odds after it.
    """
    critiques = write_critiques(model, tokenizer, prompts, completions, max_new_tokens=critique_max_tokens) if critique_first else None
    return generative_rewards(model, tokenizer, prompts, completions, critiques)


# --------------------------------------------------------------------------- reward checkpoints

CRITIQUE_MAX_TOKENS = 40
"""Default length limit of a generative reward model's critique (the reward stage's `critique_max_tokens`)."""

RewardFunction = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""reward_fn(prompts, completions) -> (n,) rewards."""


def load_reward_function(folder: str | Path, device: str | torch.device = "cpu") -> RewardFunction:
    """A reward checkpoint folder as reward_fn(prompts, completions) -> (n,) rewards, read as its reward stage
    read it: a scalar score head, or (meta.json "reward_kind" = "generative") the verdict log-odds after the
    model's own critique of the stage's length ("critique_first", "critique_max_tokens"); the centring offset
    saved in the model's config is subtracted either way. The policy stage and the analyses both read reward
    checkpoints through this."""
    from rlhf_lens.runs import load_hf_folder, read_checkpoint_meta

    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    tokenizer = load_tokenizer(folder)
    if meta.get("reward_kind") == "generative":
        model = load_causal_lm(folder).to(device)
        critique_first, critique_max_tokens = bool(meta.get("critique_first", True)), critique_length(meta, folder)

        def generative(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
            return (
                judge_texts(model, tokenizer, prompts, completions, critique_first=critique_first, critique_max_tokens=critique_max_tokens)
                .cpu()
                .numpy()
            )

        return generative
    model = load_hf_folder(folder, "score", num_labels=1).to(device)
    model.config.pad_token_id = tokenizer.pad_token_id

    def scalar(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return score_texts(model, tokenizer, prompts, completions).cpu().numpy()

    return scalar


def critique_length(meta: dict, folder: Path) -> int:
    """The generative reward stage's critique length; checkpoints written before meta.json recorded it
    were trained with the default, which is assumed with a warning."""
    if "critique_max_tokens" in meta:
        return int(meta["critique_max_tokens"])
    warnings.warn(
        f"{folder}: the checkpoint's metadata does not record critique_max_tokens (written by an older rlhf-lens); "
        f"critiques are written with the default {CRITIQUE_MAX_TOKENS} tokens",
        stacklevel=3,
    )
    return CRITIQUE_MAX_TOKENS
