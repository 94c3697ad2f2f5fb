"""Integrated gradients of a scalar reward model's reward over its input tokens.

The target is the reward exactly as `models.score_texts` computes it: the same input ids
(`models.reward_input_parts`, BOS + prompt + completion, cut from the left to the context),
right padding, the score head on the last real token found from the attention mask (not HF's
pad-id pooling), minus the centring offset (`models.rewards_at`).

The forward is written as a function of the token embeddings (`inputs_embeds`, the output of
`reward_model.get_input_embeddings()`), and integrated gradients run on those embeddings: Captum's
`IntegratedGradients(method="gausslegendre")` computation (the same nodes, weights and sums), written
out in `_integrate` so that several texts and any number of steps share a forward pass and the end-point
rewards are computed once. That is the same computation as `LayerIntegratedGradients(forward,
embedding_layer)` (whose baselines must be token ids; `benchmarks/attribution_vs_captum.py` compares the
two), and lets a zero-embedding baseline sit beside token-id baselines. Position
embeddings (GPT-2) and rotary positions (Llama, GPT-NeoX) are left to the model, unchanged along the
path. Attributions are summed over d_model, so each token gets one number; they satisfy
completeness: sum over a text's tokens = reward(x) - reward(baseline) + delta.

Shape glossary: batch, seq, d_model, step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from markupsafe import Markup

from rlhf_lens import models, views
from rlhf_lens.analyses.core.result import Result

__all__ = ["RewardAttributionResult", "adaptive_integrated_gradients", "reward_integrated_gradients", "word_starts"]

CPU_BATCH_TOKENS = 2048
"""On a CPU, tokens per forward pass at most (whatever `max_batch_tokens` allows): passes of 2k tokens
keep their tensors in cache and ran 1.3x faster per token here than passes of 16k."""
HEATMAP_TEXTS = 5
"""How many texts `to_html` shows as token heatmaps."""
WORD_MARKS = ("Ġ", "▁", " ", "\n", "\t", "Ċ")
"""Marks with which a token piece starts a new word (byte-level BPE's Ġ, SentencePiece's ▁, whitespace)."""


@dataclass(frozen=True, eq=False)
class RewardAttributionResult(Result):
    """Attribution of each text's reward to its tokens, one row per token.

    Columns:
        text: index of the (prompt, completion) pair in the inputs.
        position: the token's position in the model's input (0 = first kept token, BOS unless cut).
        token_id: the token id.
        token: the token decoded on its own (a byte-level piece; may be a partial character).
        word: index of the word the token belongs to within its text (a piece starting with a space
            or a BPE word mark starts a new word; so do special tokens and the start of the completion).
        part: "prompt" (BOS + prompt) or "completion".
        attribution: the token's share of reward(x) - reward(baseline) (summed over d_model).

    `meta["texts"]`: per text, a dict of text, prompt, completion, reward, baseline_reward, delta
    (sum of attributions - (reward - baseline_reward)) and steps (Gauss-Legendre steps used).
    """

    columns: ClassVar[tuple[str, ...]] = ("text", "position", "token_id", "token", "word", "part", "attribution")
    heading: ClassVar[str] = "Reward attribution (integrated gradients)"

    @property
    def texts(self) -> pd.DataFrame:
        """`meta["texts"]` as a table, one row per text."""
        return pd.DataFrame(list(self.meta.get("texts", [])))

    def headlines(self) -> list[tuple[str, str]]:
        texts = self.texts
        if texts.empty or self.meta.get("tolerance") is None:
            return [("texts attributed", str(len(texts)))]
        gap = (texts["reward"] - texts["baseline_reward"]).abs()
        within = (texts["delta"].abs() <= self.meta["tolerance"] * gap + self.meta.get("abs_tolerance", 1e-3)).mean()
        return [
            ("texts attributed", str(len(texts))),
            ("completeness within tolerance", f"{within:.0%}"),
            ("mean integration steps", f"{texts['steps'].mean():.1f}"),
        ]

    def plot(self, ax=None, *, text: int | None = None):
        """Bars of one text's token attributions (the first text by default); returns the axes."""
        if ax is None:
            _, ax = views.new_figure(width=8.0)
        if self.df.empty:
            ax.axis("off")
            return ax
        text = int(self.df["text"].iloc[0]) if text is None else text
        rows = self.df[self.df["text"] == text]
        values = rows["attribution"].to_numpy()
        colours = ["#b2182b" if v > 0 else "#2166ac" for v in values]
        ax.bar(np.arange(len(rows)), values, color=colours)
        ax.set_xticks(np.arange(len(rows)))
        ax.set_xticklabels([t.replace("\n", "\\n") for t in rows["token"]], rotation=90, fontsize=7)
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_ylabel("attribution")
        ax.set_title(f"text {text}: reward attribution per token")
        return ax

    def figures_html(self) -> Markup:
        """Token heatmaps of the first texts, on one symmetric scale (the largest |attribution| shown)."""
        shown = self.df[self.df["text"].isin(sorted(self.df["text"].unique())[:HEATMAP_TEXTS])]
        if shown.empty:
            return Markup("")
        scale = float(shown["attribution"].abs().max())
        parts = [
            views.token_heatmap(list(rows["token"]), [float(v) for v in rows["attribution"]], label="attribution", scale=scale)
            for _, rows in shown.groupby("text", sort=True)
        ]
        meaning = "red tokens raise the reward, blue lower it"
        if self.meta.get("baseline") != "zero":
            meaning += "; the first token (BOS) is its own baseline and gets 0"
        legend = views.heatmap_legend(label="attribution", scale=scale, meaning=meaning)
        return views.render("{{ legend }}{% for part in parts %}<p>{{ part }}</p>{% endfor %}", legend=legend, parts=parts)

    def table_html(self) -> Markup:
        return views.table(self.texts, caption="Per text: reward, baseline reward, completeness delta, steps")


# --------------------------------------------------------------------------- the forward as a function of embeddings


class _RewardOfEmbeddings(torch.nn.Module):
    """reward(inputs_embeds) as `models.score_rewards` computes it: (batch, seq, d_model) -> (batch,)."""

    def __init__(self, reward_model: torch.nn.Module):
        super().__init__()
        self.reward_model = reward_model

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.reward_model.base_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions
        ).last_hidden_state  # (batch, seq, d_model)
        last = attention_mask.sum(1) - 1  # (batch,)
        return models.rewards_at(self.reward_model, hidden[torch.arange(len(embeds), device=embeds.device), last])


def _baseline_ids(ids: list[int], baseline: str, pad_id: int, reference: list[int] | None) -> list[int]:
    """Token ids of one text's baseline, as long as the text (the mask is unchanged)."""
    if baseline == "pad":
        return [pad_id] * len(ids)
    assert reference is not None
    bos, body = reference[:1], reference[1:] or [pad_id]
    return (bos + body * len(ids))[: len(ids)]


def _gauss_legendre(n_steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes alpha in (0, 1) and weights of n-point Gauss-Legendre, as Captum's "gausslegendre" method: (step,), (step,)."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float32, device=device)  # noqa: E731
    return as_tensor(0.5 * (nodes + 1.0)), as_tensor(0.5 * weights)


def _integrate(
    forward: _RewardOfEmbeddings,
    embeds: torch.Tensor,
    base: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    n_steps: int,
    batch_tokens: int,
) -> torch.Tensor:
    """Integrated gradients of a right-padded batch, summed over d_model: -> (batch, seq).

    What Captum's `IntegratedGradients(method="gausslegendre")` computes (the same rows, step-major,
    the same weighted sum of gradients times (input - baseline)), written out so that no pass recomputes
    the rewards at the end points (Captum's convergence delta runs both again) and a pass holds any
    number of (step, text) rows, not a multiple of the texts.
    """
    alphas, weights = _gauss_legendre(n_steps, embeds.device)
    diff = embeds - base  # (batch, seq, d_model); zero at padding, which therefore gets no attribution
    texts = len(embeds)
    grads = torch.zeros_like(embeds)  # weighted sum over steps of d reward / d embeds along the path
    rows = max(1, batch_tokens // embeds.shape[1])  # (step, text) rows per forward pass
    for start in range(0, n_steps * texts, rows):
        row = torch.arange(start, min(start + rows, n_steps * texts), device=embeds.device)
        step, text = row // texts, row % texts
        scaled = (base[text] + alphas[step, None, None] * diff[text]).requires_grad_()  # (rows, seq, d_model)
        (grad,) = torch.autograd.grad(forward(scaled, mask[text], positions[text]).sum(), scaled)
        grads.index_add_(0, text, grad * weights[step, None, None])
    return (grads * diff).sum(-1) * mask


def _batches(seqs: Sequence[list[int]], tokens_per_text: int, batch_tokens: int, *, same_length: bool = False) -> list[list[int]]:
    """Indices of the texts grouped for one batch each: sorted by length (little padding), grown while
    texts x width x `tokens_per_text` stays within `batch_tokens` (a single text may exceed it); with
    `same_length`, a batch holds texts of one length."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batches, start = [], 0
    while start < len(order):
        # Sorted by length, so the batch's width is that of its last text.
        end = start + 1
        while (
            end < len(order)
            and (end + 1 - start) * tokens_per_text * len(seqs[order[end]]) <= batch_tokens
            and not (same_length and len(seqs[order[end]]) != len(seqs[order[start]]))
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def _pick(items, indices):
    return None if items is None else [items[i] for i in indices]


def _rewards(forward, embedding, seqs, base_seqs, pad_id, batch_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """reward(x) and reward(baseline) of every text, no gradients: -> (n,), (n,)."""
    reward, base_reward = np.zeros(len(seqs)), np.zeros(len(seqs))
    for batch in _batches(seqs, 1, batch_tokens):
        embeds, base, mask, positions = _embed_pair(forward, embedding, _pick(seqs, batch), _pick(base_seqs, batch), pad_id)
        with torch.inference_mode():
            reward[batch] = forward(embeds, mask, positions).double().cpu().numpy()
            base_reward[batch] = forward(base, mask, positions).double().cpu().numpy()
    return reward, base_reward


def _attribute(forward, embedding, seqs, base_seqs, pad_id, n_steps: int, batch_tokens: int) -> list[np.ndarray]:
    """IG of any number of texts at `n_steps` -> per-text attributions (len,). Texts sorted by length share
    a batch while (texts x steps) x seq stays within `batch_tokens`; one forward pass never exceeds it."""
    attrs: list[np.ndarray] = [np.zeros(0)] * len(seqs)
    for batch in _batches(seqs, n_steps, batch_tokens):
        embeds, base, mask, positions = _embed_pair(forward, embedding, _pick(seqs, batch), _pick(base_seqs, batch), pad_id)
        per_token = _integrate(forward, embeds, base, mask, positions, n_steps, batch_tokens).detach().double().cpu().numpy()
        for j, i in enumerate(batch):
            attrs[i] = per_token[j, : len(seqs[i])]
    return attrs


def _batch_tokens(reward_model: torch.nn.Module, max_batch_tokens: int) -> int:
    """Tokens per forward pass: `max_batch_tokens`, but at most `CPU_BATCH_TOKENS` on a CPU."""
    device = next(reward_model.parameters()).device
    return min(max_batch_tokens, CPU_BATCH_TOKENS) if device.type == "cpu" else max_batch_tokens


def adaptive_integrated_gradients(
    forward: torch.nn.Module,
    embedding: torch.nn.Module,
    seqs: Sequence[list[int]],
    base_seqs: Sequence[list[int]] | None,
    pad_id: int,
    *,
    n_steps: int | None,
    tolerance: float,
    max_steps: int,
    batch_tokens: int,
    first_steps: int = 16,
    abs_tolerance: float = 1e-3,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integrated gradients of `forward(embeds, mask, positions) -> (batch,)` over the embeddings of every text, at
    `n_steps`, or (None) from `first_steps` steps, doubled for the texts whose |delta| > tolerance * |f(x) - f(baseline)|
    + `abs_tolerance`, up to `max_steps`. The end points are scored once.

    -> per-text attributions (len,), f(x) (n,), f(baseline) (n,), delta (n,), steps used (n,).
    """
    n = len(seqs)
    steps = np.full(n, first_steps if n_steps is None else n_steps, dtype=np.int64)
    if not n:
        return [], np.zeros(0), np.zeros(0), np.zeros(0), steps
    reward, base_reward = _rewards(forward, embedding, seqs, base_seqs, pad_id, batch_tokens)
    attrs = _attribute(forward, embedding, seqs, base_seqs, pad_id, int(steps[0]), batch_tokens)
    delta = np.asarray([a.sum() for a in attrs]) - (reward - base_reward)
    while n_steps is None:
        missing = np.abs(delta) > tolerance * np.abs(reward - base_reward) + abs_tolerance
        redo = [i for i in range(n) if missing[i] and steps[i] * 2 <= max_steps]
        if not redo:
            break
        next_steps = int(steps[redo[0]] * 2)  # all texts still missing share one step count
        again = _attribute(forward, embedding, _pick(seqs, redo), _pick(base_seqs, redo), pad_id, next_steps, batch_tokens)
        for i, attributions in zip(redo, again):
            attrs[i], steps[i] = attributions, next_steps
            delta[i] = attributions.sum() - (reward[i] - base_reward[i])
    return attrs, reward, base_reward, delta, steps


# --------------------------------------------------------------------------- tokens and words


def word_starts(tokenizer, ids: Sequence[int], part_start: int) -> list[int]:
    """Word index of each token: a piece starting with a space or a word mark (Ġ, ▁) begins a new word,
    as do special tokens, the token after a special token, and the first completion token (`part_start`)."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    special = set(tokenizer.all_special_ids)
    words, word, previous_special = [], -1, True
    for position, (token_id, piece) in enumerate(zip(ids, pieces)):
        is_special = token_id in special
        if word < 0 or is_special or previous_special or position == part_start or str(piece).startswith(WORD_MARKS):
            word += 1
        words.append(word)
        previous_special = is_special
    return words


def _token_columns(tokenizer, text: int, prefix: list[int], suffix: list[int], decoded: dict[int, str]) -> dict[str, list]:
    """One text's rows of the token table but the attribution, as columns; `decoded` caches token texts."""
    ids = prefix + suffix
    for i in ids:
        if i not in decoded:
            decoded[i] = tokenizer.decode([i], clean_up_tokenization_spaces=False)
    return {
        "text": [text] * len(ids),
        "position": list(range(len(ids))),
        "token_id": ids,
        "token": [decoded[i] for i in ids],
        "word": word_starts(tokenizer, ids, len(prefix)),
        "part": ["prompt"] * len(prefix) + ["completion"] * len(suffix),
    }


# --------------------------------------------------------------------------- the public function


def reward_integrated_gradients(
    reward_model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    baseline: str = "pad",
    n_steps: int | None = None,
    tolerance: float = 0.01,
    max_steps: int = 128,
    max_batch_tokens: int = 16384,
    first_steps: int = 16,
    abs_tolerance: float = 1e-3,
) -> RewardAttributionResult:
    """Integrated gradients of each (prompt, completion)'s reward over its tokens (Gauss-Legendre).

    baseline: "pad" (every real token replaced by the pad/EOS id, attention mask unchanged), "zero"
        (a zero embedding at every real token), or any other string: a reference text, read as
        BOS + reference ids, cut to each text's length or, when shorter, its ids repeated until they
        fill it (not padded: on Llama-style models the pad row of the embedding table is zero, and a
        path from a zero embedding through RMSNorm is singular, see below). The attention mask is
        the text's own, so the baseline is scored at the text's own last position.
        On RMSNorm models whose pad row is zero (HF Llama sets `padding_idx`), "pad" and "zero" put
        each token's path through the zero vector, where RMSNorm jumps; integrated gradients then
        misses completeness at any step count. Use a reference text there; a warning says so.
    n_steps: an int uses exactly that many steps for every text. None adapts: every text starts at
        `first_steps` steps; texts whose |delta| > tolerance * |reward(x) - reward(baseline)| + `abs_tolerance`
        are attributed again with twice the steps, up to `max_steps` (a text that still misses keeps its last result).
    max_batch_tokens: bound on (texts x steps) x seq per forward pass; several texts share a pass. On a CPU
        passes hold at most `CPU_BATCH_TOKENS` (2048), which ran faster there than larger ones.

    The model is put in eval mode for the call (and restored). Returns a `RewardAttributionResult`.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    if n_steps is not None and n_steps < 1:
        raise ValueError(f"n_steps must be a positive int or None (adaptive), got {n_steps}")
    if max_steps < 1 or max_batch_tokens < 1:
        raise ValueError(f"max_steps and max_batch_tokens must be positive, got {max_steps} and {max_batch_tokens}")
    _check_adaptive(first_steps, abs_tolerance)
    parts, seqs, base_seqs, pad_id = _prepare(reward_model, tokenizer, prompts, completions, baseline)

    forward = _RewardOfEmbeddings(reward_model)
    embedding = reward_model.get_input_embeddings()
    was_training = reward_model.training
    reward_model.eval()
    try:
        attrs, reward, base_reward, delta, steps = adaptive_integrated_gradients(
            forward, embedding, seqs, base_seqs, pad_id, n_steps=n_steps, tolerance=tolerance, max_steps=max_steps,
            batch_tokens=_batch_tokens(reward_model, max_batch_tokens), first_steps=first_steps, abs_tolerance=abs_tolerance,
        )  # fmt: skip
    finally:
        reward_model.train(was_training)
    missed = int((np.abs(delta) > tolerance * np.abs(reward - base_reward) + abs_tolerance).sum())
    if missed:
        warnings.warn(
            f"{missed} of {len(seqs)} text(s) miss completeness (|delta| > {tolerance} * |reward - baseline reward| + "
            f"{abs_tolerance}) at {int(steps.max())} steps; their attributions do not add up to the reward difference. "
            f"{'Raise max_steps' if n_steps is None else 'Raise n_steps or pass n_steps=None (adaptive)'}, or, on an RMSNorm "
            "model (Llama) with baseline 'pad' or 'zero', use a reference-text baseline.",
            stacklevel=2,
        )

    meta = {"method": "integrated_gradients", "baseline": baseline, "n_steps": n_steps, "tolerance": tolerance, "max_steps": max_steps}
    meta |= {"first_steps": first_steps, "abs_tolerance": abs_tolerance}
    return _result(tokenizer, prompts, completions, parts, attrs, reward, base_reward, delta, steps, meta)


def _check_adaptive(first_steps: int, abs_tolerance: float) -> None:
    if first_steps < 1 or abs_tolerance < 0:
        raise ValueError(f"first_steps must be positive and abs_tolerance non-negative, got {first_steps} and {abs_tolerance}")


def _prepare(reward_model, tokenizer, prompts, completions, baseline: str):
    """-> (prompt/completion ids per text, input ids per text, baseline ids per text or None for "zero", pad id)."""
    models.require_score_head(reward_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    parts = models.reward_input_parts(tokenizer, prompts, completions, models.context_length(reward_model))
    seqs = [p + c for p, c in parts]
    if any(not s for s in seqs):
        raise ValueError("a text has no tokens (and the tokenizer no BOS); nothing to attribute")
    if baseline == "zero":
        return parts, seqs, None, pad_id
    reference = None if baseline == "pad" else models.encode_prompts(tokenizer, [baseline])[0]
    return parts, seqs, [_baseline_ids(s, baseline, pad_id, reference) for s in seqs], pad_id


def _result(tokenizer, prompts, completions, parts, attrs, reward, base_reward, delta, steps, meta) -> RewardAttributionResult:
    # One frame from whole columns, one decode per distinct token: 8 ms for 256 texts here where a frame per
    # text and a decode per token took 87 ms, which counts where the attribution itself is fast (a GPU).
    decoded: dict[int, str] = {}
    columns: dict[str, list] = {c: [] for c in RewardAttributionResult.columns[:-1]}  # all but "attribution"
    for i, (prefix, suffix) in enumerate(parts):
        for name, values in _token_columns(tokenizer, i, prefix, suffix, decoded).items():
            columns[name].extend(values)
    if parts:
        integers = {name: np.asarray(columns[name], dtype=np.int64) for name in ("text", "position", "token_id", "word")}
        attribution = np.concatenate([np.asarray(a, dtype=np.float64) for a in attrs])
        df = pd.DataFrame({**columns, **integers, "attribution": attribution})[list(RewardAttributionResult.columns)]
    else:
        df = pd.DataFrame({c: [] for c in RewardAttributionResult.columns})
    texts = [
        {
            "text": i,
            "prompt": str(prompts[i]),
            "completion": str(completions[i]),
            "reward": float(reward[i]),
            "baseline_reward": float(base_reward[i]),
            "delta": float(delta[i]),
            "steps": int(steps[i]),
        }
        for i in range(len(parts))
    ]
    return RewardAttributionResult(df=df, meta={**meta, "texts": texts})


def _embed_pair(forward, embedding, seqs, base_seqs, pad_id):
    """Right-padded inputs and baselines in embedding space -> embeds, base (batch, seq, d_model), mask, positions.
    Padding positions keep the input's embedding in the baseline, so they get no attribution."""
    device = next(forward.parameters()).device
    ids, mask = models.pad_right(seqs, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    with torch.no_grad():
        embeds = embedding(ids)  # (batch, seq, d_model)
        base = torch.zeros_like(embeds) if base_seqs is None else embedding(models.pad_right(base_seqs, pad_id)[0].to(device))
        base = torch.where(mask.bool()[:, :, None], base, embeds)
    return embeds, base, mask, models.position_ids(mask)
