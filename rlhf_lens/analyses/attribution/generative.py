"""Integrated gradients of a generative reward model's verdict log-odds over its input tokens.

The target is the reward exactly as `models.generative_rewards` computes it: the causal LM reads
BOS + `verdict_prefix(prompt, completion, critique)` (`models.encode_prompts`, then
`models.fit_to_context(ids, context - 4)`), and the reward is log p(" good") - log p(" bad") at the
verdict, minus the config's `reward_offset`. A verdict that is several tokens long is scored by the
sum of its tokens' log-probabilities, each given the tokens before it (teacher forcing, as
`completion_logprobs` + `sequence_logprobs` do). The critique is teacher-forced too: it is an input
like the prompt and the completion, given as text or written once by the model itself
(`models.write_critiques`, as `judge_texts` does with `critique_first`), never sampled along the path.

Inputs and baseline. Every token of the prefix gets a row, labelled by its `part`:
- "prompt", "completion", "critique": the content being judged (the critique includes the space that
  `verdict_prefix` puts before it);
- "template": BOS and the marks ("\\nCritique:", "\\nVerdict:") that make the model a judge.
The baseline replaces the content tokens (pad id, or a reference text) and keeps the template tokens:
the question is which words of the prompt, completion and critique move the verdict, and the
reference point is the same judging template with nothing in it. Replacing the marks as well would
take the model off the format it was trained on, so the baseline reward would measure "no template"
rather than "no content", and the marks' share would be that format effect. Template tokens are
identical in input and baseline, so their attribution is exactly 0; they are listed so that every
input position is accounted for. The critique is interpolated with the rest of the content, so its
share says how much of the verdict the critique carries beside the text it judges. The verdict
tokens fed back to score a multi-token verdict are targets, not inputs: fixed, never attributed.

Parts are found from the tokenizer's offsets of the whole prefix, which is encoded in one piece (the
ids must be the ids `generative_rewards` scores, and BPE may merge across a boundary: a prompt ending
in "Great" and a completion starting with "ly" become one token). A token is labelled by the first
content character it covers, so a token that straddles prompt and completion counts as prompt, and one
that merges content with a mark (a completion ending in "\\n" before "\\nVerdict:") counts as content and
is interpolated; only tokens made of template characters alone are "template". This needs a fast
(Rust) tokenizer, the kind `AutoTokenizer` and `models.load_tokenizer` return.

The forward is written as a function of the prefix's token embeddings and run through Captum's
`IntegratedGradients` with the batching and adaptive Gauss-Legendre steps of
`attribution.reward` (same completeness test, same `max_batch_tokens` accounting over the prefix).
The verdict log-probabilities are read from the backbone's last hidden states at the verdict positions
through the output embeddings (the LM head), not from full-vocabulary logits at every position.

Shape glossary: batch, seq, d_model, vocab, step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from rlhf_lens import models
from rlhf_lens.analyses.attribution.reward import (
    RewardAttributionResult,
    _batch_tokens,
    _check_adaptive,
    adaptive_integrated_gradients,
    word_starts,
)

__all__ = ["generative_integrated_gradients", "generative_token_parts"]

PARTS = ("prompt", "completion", "critique", "template")
"""Values of the `part` column: the three kinds of content, then BOS and the marks."""
CONTEXT_RESERVE = 4
"""Positions `generative_rewards` leaves free after the prefix for the verdict (`fit_to_context(ids, context - 4)`)."""
BASELINES = "'pad' or a reference text"


# --------------------------------------------------------------------------- the target as a function of embeddings


class _VerdictLogOddsOfEmbeddings(torch.nn.Module):
    """log p(good) - log p(bad) - reward_offset after each right-padded prefix: (batch, seq, d_model) -> (batch,).

    Each verdict's tokens but the last are appended right after the row's last real token (teacher forcing);
    its log-probability is the sum over its tokens of log_softmax(head(hidden)) at the positions predicting them.
    """

    def __init__(self, model: torch.nn.Module, good: list[int], bad: list[int]):
        super().__init__()
        self.model = model
        self.good, self.bad = good, bad
        self.offset = float(getattr(model.config, "reward_offset", 0.0))

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # `positions` (passed by reward.adaptive_integrated_gradients) covers the prefix only; positions are recomputed with the verdict tokens.
        lengths = attention_mask.sum(1)  # (batch,)
        read: dict[tuple[int, ...], torch.Tensor] = {}  # verdict tokens fed in -> log-probs after them
        total = []
        for verdict in (self.good, self.bad):
            fed = tuple(verdict[:-1])
            if fed not in read:
                read[fed] = self._logprobs_after(embeds, attention_mask, lengths, list(fed))  # (batch, len(verdict), vocab)
            targets = torch.tensor(verdict, device=embeds.device)
            total.append(read[fed][:, torch.arange(len(verdict), device=embeds.device), targets].sum(-1))  # (batch,)
        return total[0] - total[1] - self.offset

    def _logprobs_after(self, embeds, attention_mask, lengths, fed: list[int]) -> torch.Tensor:
        """Log-probs (batch, len(fed) + 1, vocab) at the last prefix position and at each fed verdict token."""
        batch, width, d_model = embeds.shape
        device = embeds.device
        if fed:
            slots = lengths[:, None] + torch.arange(len(fed), device=device)[None, :]  # (batch, n_fed)
            fed_embeds = self.model.get_input_embeddings()(torch.tensor(fed, device=device))  # (n_fed, d_model)
            embeds = torch.cat([embeds, embeds.new_zeros(batch, len(fed), d_model)], 1)  # (batch, seq + n_fed, d_model)
            embeds = embeds.scatter(1, slots[:, :, None].expand(-1, -1, d_model), fed_embeds[None].expand(batch, -1, -1))
            attention_mask = torch.cat([attention_mask, attention_mask.new_zeros(batch, len(fed))], 1)
            attention_mask = attention_mask.scatter(1, slots, 1)
        hidden = self.model.base_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=models.position_ids(attention_mask)
        ).last_hidden_state  # (batch, seq + n_fed, d_model)
        at = lengths[:, None] - 1 + torch.arange(len(fed) + 1, device=device)[None, :]  # (batch, n_fed + 1)
        picked = torch.gather(hidden, 1, at[:, :, None].expand(-1, -1, hidden.shape[-1]))
        logits = self.model.get_output_embeddings()(picked).float()  # (batch, n_fed + 1, vocab)
        return torch.log_softmax(logits, dim=-1)


# --------------------------------------------------------------------------- parts of the prefix


def _char_parts(prompt: str, completion: str, critique: str | None) -> list[int]:
    """Index into PARTS of each character of `verdict_prefix(prompt, completion, critique)`."""
    spans = [(0, prompt), (1, completion)]
    if critique is not None:
        spans += [(3, models.CRITIQUE_MARK), (2, " " + critique.strip())]
    spans.append((3, models.VERDICT_MARK))
    chars = [part for part, piece in spans for _ in piece]
    if len(chars) != len(models.verdict_prefix(prompt, completion, critique)):
        raise RuntimeError("models.verdict_prefix no longer joins prompt, completion, critique and marks as expected here")
    return chars


def generative_token_parts(tokenizer, prompt: str, completion: str, critique: str | None) -> tuple[list[int], list[str]]:
    """BOS + the ids of `verdict_prefix(prompt, completion, critique)` (before any cut to the context),
    and the part of each: "template" for BOS and the marks, else the part of the first content character
    the token covers (see the module docstring)."""
    text = models.verdict_prefix(prompt, completion, critique)
    chars = _char_parts(prompt, completion, critique)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = models.encode_prompts(tokenizer, [text])[0]
    if list(encoded["input_ids"]) != ids[1:]:
        raise RuntimeError("the tokenizer encodes the verdict prefix differently with offsets; cannot locate parts")
    parts = ["template"]
    for start, end in encoded["offset_mapping"]:
        covered = chars[start:end] if end > start else chars[min(start, len(chars) - 1) :][:1]
        content = [c for c in covered if c != 3]
        parts.append(PARTS[content[0]] if content else "template")
    return ids, parts


def _token_rows(tokenizer, text: int, ids: list[int], parts: list[str], attribution: np.ndarray) -> pd.DataFrame:
    words = np.asarray(word_starts(tokenizer, ids, len(ids)), dtype=np.int64)
    # A new part starts a new word too (word_starts knows only one boundary).
    new_word = np.r_[True, (np.diff(words) > 0) | (np.asarray(parts[1:]) != np.asarray(parts[:-1]))]
    return pd.DataFrame(
        {
            "text": np.full(len(ids), text, dtype=np.int64),
            "position": np.arange(len(ids), dtype=np.int64),
            "token_id": np.asarray(ids, dtype=np.int64),
            "token": [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids],
            "word": np.cumsum(new_word).astype(np.int64) - 1,
            "part": list(parts),
            "attribution": attribution.astype(np.float64),
        }
    )


# --------------------------------------------------------------------------- the public function


def generative_integrated_gradients(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    critiques: None | str | Sequence[str] = None,
    critique_max_tokens: int = models.CRITIQUE_MAX_TOKENS,
    baseline: str = "pad",
    n_steps: int | None = None,
    tolerance: float = 0.01,
    max_steps: int = 128,
    max_batch_tokens: int = 16384,
    first_steps: int = 16,
    abs_tolerance: float = 1e-3,
) -> RewardAttributionResult:
    """Integrated gradients of a generative reward model's verdict log-odds over each prefix's tokens.

    model: the causal LM of a generative reward model (`models.load_causal_lm`); its config's
        `reward_offset` is subtracted as `generative_rewards` does.
    critiques: None (the verdict follows the completion directly), "model" (the model first writes its own
        greedy critique of at most `critique_max_tokens` tokens, as `judge_texts(critique_first=True)` does;
        pass the checkpoint's `critique_max_tokens`), or one critique text per pair. The critique is then
        teacher-forced: fixed text, attributed like the prompt and completion.
    baseline: "pad" (each prompt, completion and critique token replaced by the pad/EOS id) or any other
        string: a reference text whose ids (without BOS), repeated, fill those positions. BOS and the marks
        stay as they are (see the module docstring); the attention mask is the text's own. On a Llama-style
        model whose pad row is zero, use a reference text (see `reward_integrated_gradients`).
    n_steps, tolerance, max_steps, max_batch_tokens, first_steps, abs_tolerance: as in `reward_integrated_gradients`:
        None adapts the Gauss-Legendre steps per text, from `first_steps`, doubling until |delta| <= tolerance *
        |reward - baseline reward| + `abs_tolerance` or `max_steps`; `max_batch_tokens` bounds (texts x steps) x prefix length per Captum
        call (each call runs the backbone once per distinct verdict, so about twice that).

    Returns a `RewardAttributionResult`: one row per prefix token, `part` in "prompt", "completion",
    "critique", "template"; `meta["texts"]` adds each text's critique (None without one). The model is put
    in eval mode for the call (and restored).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    if isinstance(critiques, str) and critiques != "model":
        raise ValueError(f'critiques must be None, "model" or one critique text per pair, got the string {critiques!r}')
    if critiques is not None and not isinstance(critiques, str) and len(critiques) != len(prompts):
        raise ValueError(f"got {len(critiques)} critiques for {len(prompts)} pairs; pass one critique per pair")
    if baseline == "zero":
        raise ValueError(
            f"baseline must be {BASELINES}; 'zero' is not offered for generative reward models: it would either "
            "zero the template marks too or mix a zero vector with their embeddings"
        )
    if n_steps is not None and n_steps < 1:
        raise ValueError(f"n_steps must be a positive int or None (adaptive), got {n_steps}")
    if max_steps < 1 or max_batch_tokens < 1:
        raise ValueError(f"max_steps and max_batch_tokens must be positive, got {max_steps} and {max_batch_tokens}")
    _check_adaptive(first_steps, abs_tolerance)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer without offsets; load a fast one "
            "(models.load_tokenizer or AutoTokenizer.from_pretrained(..., use_fast=True)) to locate the parts"
        )
    if model.get_output_embeddings() is None:
        raise TypeError(f"{type(model).__name__} has no LM head; a generative reward model is a causal LM (models.load_causal_lm)")

    was_training = model.training
    model.eval()
    source = "none" if critiques is None else ("model" if isinstance(critiques, str) else "given")
    try:
        if critiques == "model":
            critiques = models.write_critiques(model, tokenizer, list(prompts), list(completions), max_new_tokens=critique_max_tokens)
        critique_list = [None] * len(prompts) if critiques is None else [str(c) for c in critiques]
        seqs, parts, base_seqs, pad_id = _prepare(model, tokenizer, prompts, completions, critique_list, baseline)
        good, bad = (tokenizer(v, add_special_tokens=False)["input_ids"] for v in models.VERDICTS)
        forward = _VerdictLogOddsOfEmbeddings(model, good, bad)
        attrs, reward, base_reward, delta, steps = adaptive_integrated_gradients(
            forward, model.get_input_embeddings(), seqs, base_seqs, pad_id, n_steps=n_steps, tolerance=tolerance,
            max_steps=max_steps, batch_tokens=_batch_tokens(model, max_batch_tokens), first_steps=first_steps,
            abs_tolerance=abs_tolerance,
        )  # fmt: skip
    finally:
        model.train(was_training)
    _warn_missed(reward, base_reward, delta, steps, tolerance, abs_tolerance, n_steps)

    frames = [_token_rows(tokenizer, i, seqs[i], parts[i], attrs[i]) for i in range(len(seqs))]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in RewardAttributionResult.columns})
    texts = [
        {
            "text": i,
            "prompt": str(prompts[i]),
            "completion": str(completions[i]),
            "critique": critique_list[i],
            "reward": float(reward[i]),
            "baseline_reward": float(base_reward[i]),
            "delta": float(delta[i]),
            "steps": int(steps[i]),
        }
        for i in range(len(seqs))
    ]
    meta = {
        "method": "integrated_gradients",
        "target": "verdict log-odds",
        "critiques": source,
        "baseline": baseline,
        "n_steps": n_steps,
        "tolerance": tolerance,
        "max_steps": max_steps,
        "first_steps": first_steps,
        "abs_tolerance": abs_tolerance,
    }
    return RewardAttributionResult(df=df, meta={**meta, "texts": texts})


def _prepare(model, tokenizer, prompts, completions, critiques, baseline: str):
    """-> (input ids per text, part per token, baseline ids per text, pad id), cut to the context as `generative_rewards` cuts."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    budget = models.context_length(model) - CONTEXT_RESERVE
    reference = None if baseline == "pad" else tokenizer(baseline, add_special_tokens=False)["input_ids"]
    if reference is not None and not reference:
        raise ValueError(f"baseline must be {BASELINES}; the reference text {baseline!r} has no tokens")
    seqs, parts, base_seqs, cut = [], [], [], 0
    for prompt, completion, critique in zip(prompts, completions, critiques):
        ids, labels = generative_token_parts(tokenizer, prompt, completion, critique)
        cut += len(ids) > budget
        ids, labels = models.fit_to_context(ids, budget), labels[-budget:]
        seqs.append(ids)
        parts.append(labels)
        base_seqs.append(
            [
                i if part == "template" else pad_id if reference is None else reference[k % len(reference)]
                for k, (i, part) in enumerate(zip(ids, labels))
            ]
        )
    if cut:
        warnings.warn(
            f"{cut} verdict prefix(es) exceed the model's context less {CONTEXT_RESERVE} tokens; truncated from the left "
            "as generative_rewards truncates them.",
            stacklevel=3,
        )
    return seqs, parts, base_seqs, pad_id


def _warn_missed(reward, base_reward, delta, steps, tolerance, abs_tolerance, n_steps) -> None:
    missed = int((np.abs(delta) > tolerance * np.abs(reward - base_reward) + abs_tolerance).sum())
    if missed:
        warnings.warn(
            f"{missed} of {len(delta)} text(s) miss completeness (|delta| > {tolerance} * |reward - baseline reward| + "
            f"{abs_tolerance}) at {int(steps.max())} steps; their attributions do not add up to the verdict log-odds "
            f"difference. {'Raise max_steps' if n_steps is None else 'Raise n_steps or pass n_steps=None (adaptive)'}, or, "
            "on an RMSNorm model (Llama) with baseline 'pad', use a reference-text baseline.",
            stacklevel=3,
        )
