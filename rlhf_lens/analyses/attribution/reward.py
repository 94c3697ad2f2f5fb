"""Integrated gradients of a scalar reward model's reward over its input tokens.

The target is the reward exactly as `models.score_texts` computes it: the same input ids
(`models.reward_input_parts`, BOS + prompt + completion, cut from the left to the context),
right padding, the score head on the last real token found from the attention mask (not HF's
pad-id pooling), minus the centring offset (`models.rewards_at`).

The forward is written as a function of the token embeddings (`inputs_embeds`, the output of
`reward_model.get_input_embeddings()`), and Captum's `IntegratedGradients` runs on those embeddings.
That is the same computation as `LayerIntegratedGradients(forward, embedding_layer)` (whose baselines
must be token ids), and lets a zero-embedding baseline sit beside token-id baselines. Position
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

__all__ = ["RewardAttributionResult", "reward_feature_ablation", "reward_integrated_gradients", "word_starts"]

FIRST_STEPS = 16
"""Gauss-Legendre steps of the first adaptive pass."""
ABS_TOLERANCE = 1e-3
"""Absolute slack of the completeness test: |delta| <= tolerance * |reward(x) - reward(baseline)| + this."""
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
        within = (texts["delta"].abs() <= self.meta["tolerance"] * gap + ABS_TOLERANCE).mean()
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
        return views.render("{% for part in parts %}<p>{{ part }}</p>{% endfor %}", parts=parts)

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


def _attribute_chunk(
    forward: _RewardOfEmbeddings,
    embedding: torch.nn.Module,
    seqs: Sequence[list[int]],
    base_seqs: Sequence[list[int]] | None,
    pad_id: int,
    n_steps: int,
    max_batch_tokens: int,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """IG of several texts in one Captum call -> (per-text attributions (len,), reward, baseline reward, delta)."""
    from captum.attr import IntegratedGradients

    embeds, base, mask, positions = _embed_pair(forward, embedding, seqs, base_seqs, pad_id)
    with torch.no_grad():
        reward = forward(embeds, mask, positions)
        base_reward = forward(base, mask, positions)
    rows = max(1, max_batch_tokens // embeds.shape[1])  # rows of (text, step) per forward pass
    internal = max(len(seqs), (rows // len(seqs)) * len(seqs))
    attributions, delta = IntegratedGradients(forward).attribute(
        embeds,
        baselines=base,
        additional_forward_args=(mask, positions),
        n_steps=n_steps,
        method="gausslegendre",
        internal_batch_size=internal,
        return_convergence_delta=True,
    )
    per_token = (attributions.sum(-1) * mask).detach().cpu().double().numpy()  # (batch, seq)
    lengths = [len(s) for s in seqs]
    return (
        [per_token[i, :n] for i, n in enumerate(lengths)],
        reward.cpu().double().numpy(),
        base_reward.cpu().double().numpy(),
        delta.detach().cpu().double().numpy(),
    )


def _attribute(
    forward, embedding, seqs, base_seqs, pad_id, n_steps: int, max_batch_tokens: int
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """IG of any number of texts at `n_steps`: texts sorted by length, chunked so that
    (texts x steps) x seq stays within `max_batch_tokens` where one text's steps allow it."""
    n = len(seqs)
    order = sorted(range(n), key=lambda i: len(seqs[i]))
    attrs: list[np.ndarray] = [np.zeros(0)] * n
    reward, base_reward, delta = np.zeros(n), np.zeros(n), np.zeros(n)
    start = 0
    while start < n:
        # Texts are sorted by length, so the chunk's width is that of its last text; grow it while it fits.
        end = start + 1
        while end < n and (end + 1 - start) * n_steps * len(seqs[order[end]]) <= max_batch_tokens:
            end += 1
        chunk = order[start:end]
        out = _attribute_chunk(
            forward,
            embedding,
            [seqs[i] for i in chunk],
            None if base_seqs is None else [base_seqs[i] for i in chunk],
            pad_id,
            n_steps,
            max_batch_tokens,
        )
        for j, i in enumerate(chunk):
            attrs[i], reward[i], base_reward[i], delta[i] = out[0][j], out[1][j], out[2][j], out[3][j]
        start = end
    return attrs, reward, base_reward, delta


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


def _token_rows(tokenizer, text: int, prefix: list[int], suffix: list[int], attribution: np.ndarray) -> pd.DataFrame:
    ids = prefix + suffix
    return pd.DataFrame(
        {
            "text": np.full(len(ids), text, dtype=np.int64),
            "position": np.arange(len(ids), dtype=np.int64),
            "token_id": np.asarray(ids, dtype=np.int64),
            "token": [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids],
            "word": np.asarray(word_starts(tokenizer, ids, len(prefix)), dtype=np.int64),
            "part": ["prompt"] * len(prefix) + ["completion"] * len(suffix),
            "attribution": attribution.astype(np.float64),
        }
    )


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
    n_steps: an int uses exactly that many steps for every text. None adapts: every text starts at 16
        steps; texts whose |delta| > tolerance * |reward(x) - reward(baseline)| + 1e-3 are attributed
        again with twice the steps, up to `max_steps` (a text that still misses keeps its last result).
    max_batch_tokens: bound on (texts x steps) x seq per forward pass; several texts share one Captum call.

    The model is put in eval mode for the call (and restored). Returns a `RewardAttributionResult`.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    if n_steps is not None and n_steps < 1:
        raise ValueError(f"n_steps must be a positive int or None (adaptive), got {n_steps}")
    if max_steps < 1 or max_batch_tokens < 1:
        raise ValueError(f"max_steps and max_batch_tokens must be positive, got {max_steps} and {max_batch_tokens}")
    parts, seqs, base_seqs, pad_id = _prepare(reward_model, tokenizer, prompts, completions, baseline)

    forward = _RewardOfEmbeddings(reward_model)
    embedding = reward_model.get_input_embeddings()
    was_training = reward_model.training
    reward_model.eval()
    try:
        n = len(seqs)
        steps = np.full(n, FIRST_STEPS if n_steps is None else n_steps, dtype=np.int64)
        attrs, reward, base_reward, delta = (
            _attribute(forward, embedding, seqs, base_seqs, pad_id, int(steps[0]), max_batch_tokens)
            if n
            else ([], np.zeros(0), np.zeros(0), np.zeros(0))
        )
        if n_steps is None:
            while True:
                missing = np.abs(delta) > tolerance * np.abs(reward - base_reward) + ABS_TOLERANCE
                redo = [i for i in range(n) if missing[i] and steps[i] * 2 <= max_steps]
                if not redo:
                    break
                next_steps = int(steps[redo[0]] * 2)  # all texts still missing share one step count
                out = _attribute(
                    forward,
                    embedding,
                    [seqs[i] for i in redo],
                    None if base_seqs is None else [base_seqs[i] for i in redo],
                    pad_id,
                    next_steps,
                    max_batch_tokens,
                )
                for j, i in enumerate(redo):
                    attrs[i], reward[i], base_reward[i], delta[i] = out[0][j], out[1][j], out[2][j], out[3][j]
                    steps[i] = next_steps
    finally:
        reward_model.train(was_training)
    missed = int((np.abs(delta) > tolerance * np.abs(reward - base_reward) + ABS_TOLERANCE).sum())
    if missed:
        warnings.warn(
            f"{missed} of {len(seqs)} text(s) miss completeness (|delta| > {tolerance} * |reward - baseline reward| + "
            f"{ABS_TOLERANCE}) at {int(steps.max())} steps; their attributions do not add up to the reward difference. "
            f"{'Raise max_steps' if n_steps is None else 'Raise n_steps or pass n_steps=None (adaptive)'}, or, on an RMSNorm "
            "model (Llama) with baseline 'pad' or 'zero', use a reference-text baseline.",
            stacklevel=2,
        )

    meta = {"method": "integrated_gradients", "baseline": baseline, "n_steps": n_steps, "tolerance": tolerance, "max_steps": max_steps}
    return _result(tokenizer, prompts, completions, parts, attrs, reward, base_reward, delta, steps, meta)


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
    frames = [_token_rows(tokenizer, i, parts[i][0], parts[i][1], attrs[i]) for i in range(len(parts))]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: [] for c in RewardAttributionResult.columns})
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


def reward_feature_ablation(
    reward_model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    baseline: str = "pad",
    max_batch_tokens: int = 16384,
) -> RewardAttributionResult:
    """Occlusion of each token: attribution = reward(x) - reward(x with that one token replaced by the baseline).

    Same target, inputs and baselines as `reward_integrated_gradients` (Captum's FeatureAblation on the same
    forward over embeddings; "zero" replaces the token's embedding by zeros). Attributions need not add up:
    `delta` = sum of attributions - (reward(x) - reward(all tokens replaced)) measures the interaction, and
    `steps` is the number of ablations (the text's length). Returns a `RewardAttributionResult`.
    """
    from captum.attr import FeatureAblation

    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    parts, seqs, base_seqs, pad_id = _prepare(reward_model, tokenizer, prompts, completions, baseline)
    forward = _RewardOfEmbeddings(reward_model)
    embedding = reward_model.get_input_embeddings()
    n = len(seqs)
    attrs: list[np.ndarray] = [np.zeros(0)] * n
    reward, base_reward, delta = np.zeros(n), np.zeros(n), np.zeros(n)
    was_training = reward_model.training
    reward_model.eval()
    try:
        order = sorted(range(n), key=lambda i: len(seqs[i]))
        start = 0
        while start < n:
            end = start + 1
            while end < n and (end + 1 - start) * len(seqs[order[end]]) <= max_batch_tokens:
                end += 1
            chunk = order[start:end]
            embeds, base, mask, positions = _embed_pair(
                forward, embedding, [seqs[i] for i in chunk], None if base_seqs is None else [base_seqs[i] for i in chunk], pad_id
            )
            width = embeds.shape[1]
            feature_mask = torch.arange(width, device=embeds.device)[None, :, None].expand(1, width, embeds.shape[2])
            with torch.no_grad():
                attributions = FeatureAblation(forward).attribute(
                    embeds,
                    baselines=base,
                    additional_forward_args=(mask, positions),
                    feature_mask=feature_mask,
                    perturbations_per_eval=max(1, max_batch_tokens // (len(chunk) * width)),
                )
                full = forward(embeds, mask, positions).double().cpu().numpy()
                empty = forward(base, mask, positions).double().cpu().numpy()
            per_token = (attributions[:, :, 0] * mask).double().cpu().numpy()  # (batch, seq)
            for j, i in enumerate(chunk):
                attrs[i] = per_token[j, : len(seqs[i])]
                reward[i], base_reward[i] = full[j], empty[j]
                delta[i] = attrs[i].sum() - (full[j] - empty[j])
            start = end
    finally:
        reward_model.train(was_training)
    steps = np.asarray([len(s) for s in seqs], dtype=np.int64)
    meta = {"method": "feature_ablation", "baseline": baseline, "n_steps": None, "tolerance": None, "max_steps": None}
    return _result(tokenizer, prompts, completions, parts, attrs, reward, base_reward, delta, steps, meta)
