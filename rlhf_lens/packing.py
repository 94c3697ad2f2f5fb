"""Shared-prefix packing: score texts that share a prompt in one forward pass, with no padding waste.

A reward batch holds texts BOS + prompt + completion, and the texts of one prompt share their
prefix: a comparison's chosen and rejected, or all K completions of a ranked prompt. Padded
batches compute that prefix once per text and pad every text to the longest (about half the
tokens of a typical batch are padding or repeated prompts). Packing writes each prefix once,
followed by its completions, and packs these segments side by side into rows::

    tokens:     BOS The camera is | great . | awful ! ! | BOS I bought it | ...
    positions:   0   1     2    3 |  4    5 |  4    5 6 |  0  1   2     3 | ...

A 4-D attention mask lets a prefix token see the earlier tokens of its prefix, and a completion
token see its whole prefix and the earlier tokens of its own completion, nothing else (tree
attention, as in SpecInfer, Miao et al. 2023). Position ids restart at each segment and continue
from the prefix in each completion, so every text is computed as it would be alone (up to float
rounding); the reward is the score head read at the text's last token, which is what HF's
sequence-classification pooling reads on a right-padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf_lens.models import context_length, require_score_head, rewards_at

Text = tuple[Sequence[int], Sequence[int]]
"""(prefix ids, suffix ids): BOS + prompt, and the completion; either may be empty, not both."""


@dataclass(frozen=True)
class PackedBatch:
    """Texts packed into rows; tensors on the CPU."""

    input_ids: torch.Tensor
    """(rows, width) token ids; pad_id after the last segment of a row."""
    position_ids: torch.Tensor
    """(rows, width) position of each token within its own text."""
    allowed: torch.Tensor
    """(rows, width, width) bool: query column q may attend to key column k."""
    last: tuple[torch.Tensor, torch.Tensor]
    """(row, column) of each text's last token, each (n_texts,), in the order the texts were given."""
    suffix_start: torch.Tensor | None = None
    """(n_texts,) column of each text's first suffix token (in row `last[0]`); its prefix's last token is the column
    `prefix_last`."""
    prefix_last: torch.Tensor | None = None
    """(n_texts,) column of the last token of each text's prefix (-1 for a text without one)."""

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()


def segments_by_prefix(texts: Sequence[Text], max_segment: int | None = None) -> list[tuple[tuple[int, ...], list[int]]]:
    """Group texts with identical prefixes: [(prefix, [text indices])] in order of first appearance. With
    `max_segment`, a group whose prefix and suffixes would take more tokens is split into several segments, each
    repeating the prefix (attention costs the square of a segment's length: 64 completions of one prompt in one
    segment would cost far more than the padded pass)."""
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, (prefix, suffix) in enumerate(texts):
        if not len(prefix) and not len(suffix):
            raise ValueError(f"text {i} is empty: a reward model needs at least one token (BOS)")
        by_prefix.setdefault(tuple(prefix), []).append(i)
    if max_segment is None:
        return list(by_prefix.items())
    segments = []
    for prefix, members in by_prefix.items():
        current, size = [], len(prefix)
        for i in members:
            if current and size + len(texts[i][1]) > max_segment:
                segments.append((prefix, current))
                current, size = [], len(prefix)
            current.append(i)
            size += len(texts[i][1])
        segments.append((prefix, current))
    return segments


def first_fit_decreasing(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Bins (rows) of item indices, each holding at most `width` in total; longest items placed first."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


ROW_WIDTH = 96
"""Default row width: wide enough to hold two or three comparisons, narrow enough that attention stays cheap."""


def pack_texts(texts: Sequence[Text], pad_id: int, *, min_width: int = ROW_WIDTH, max_segment: int | None = None) -> PackedBatch:
    """Pack texts into rows of width max(min_width, longest segment), sharing equal prefixes (in segments of at most
    `max_segment` tokens, or of one text where a single text is longer)."""
    segments = segments_by_prefix(texts, max_segment)
    sizes = [len(prefix) + sum(len(texts[i][1]) for i in members) for prefix, members in segments]
    width = max(max(sizes), min_width)
    rows = first_fit_decreasing(sizes, width)

    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # pad columns: segment -1
    branch = torch.zeros((len(rows), width), dtype=torch.long)  # 0: prefix (or pad), j + 1: suffix j
    last_row = torch.empty(len(texts), dtype=torch.long)
    last_col = torch.empty(len(texts), dtype=torch.long)
    suffix_start = torch.empty(len(texts), dtype=torch.long)
    prefix_last = torch.empty(len(texts), dtype=torch.long)
    for r, members in enumerate(rows):
        col = 0
        for s in members:
            prefix, text_indices = segments[s]
            p = len(prefix)
            ids[r, col : col + p] = torch.tensor(prefix, dtype=torch.long)
            positions[r, col : col + p] = torch.arange(p)
            segment[r, col : col + p] = s
            prefix_end = col + p
            col += p
            for j, t in enumerate(text_indices, start=1):
                suffix = texts[t][1]
                n = len(suffix)
                ids[r, col : col + n] = torch.tensor(list(suffix), dtype=torch.long)
                positions[r, col : col + n] = torch.arange(p, p + n)
                segment[r, col : col + n] = s
                branch[r, col : col + n] = j
                last_row[t] = r
                last_col[t] = col + n - 1 if n else prefix_end - 1
                suffix_start[t], prefix_last[t] = col, prefix_end - 1
                col += n
        # pad columns (position 0) form one more segment: every query attends to at least one key (no NaN)
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (q, k): k <= q
    same_segment = segment[:, :, None] == segment[:, None, :]
    same_branch = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])  # key in prefix, or same suffix
    return PackedBatch(ids, positions, causal & same_segment & same_branch, (last_row, last_col), suffix_start, prefix_last)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(rows, q, k) bool -> (rows, 1, q, k) float: 0 where allowed, the dtype's minimum elsewhere (HF's 4-D mask)."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def packed_rewards(reward_model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Scalar rewards of a sequence-classification model on packed texts: -> (n_texts,).

    Same values as `models.score_rewards` on the texts padded (the centring offset is subtracted).
    Differentiable: wrap in torch.no_grad() when no gradient is needed.
    """
    require_score_head(reward_model)
    parameter = next(reward_model.parameters())
    device = parameter.device
    hidden = reward_model.base_model(
        input_ids=batch.input_ids.to(device),
        position_ids=batch.position_ids.to(device),
        attention_mask=additive_mask(batch.allowed, parameter.dtype).to(device),
    ).last_hidden_state  # (rows, width, d_model)
    rows, cols = batch.last
    last_hidden = hidden[rows.to(device), cols.to(device)]  # (n_texts, d_model)
    return rewards_at(reward_model, last_hidden)


def _segment_cap(model: torch.nn.Module) -> int:
    """The longest packed segment for `model`: its context, looking through a DistributedDataParallel or
    `models.TokenValues` wrapper."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    if not hasattr(inner, "config"):
        inner = inner.model  # TokenValues
    return max(ROW_WIDTH, context_length(inner))


def _pack_completions(prompt_ids, completion_ids, pad_id: int, max_segment: int) -> PackedBatch:
    if any(not len(p) for p in prompt_ids) or any(not len(c) for c in completion_ids):
        raise ValueError("packed completion passes need a non-empty prompt (at least BOS) and completion for every text")
    return pack_texts(list(zip(prompt_ids, completion_ids)), pad_id, max_segment=max_segment)


def _packed_inputs(batch: PackedBatch, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
    device = parameter.device
    return {
        "input_ids": batch.input_ids.to(device),
        "position_ids": batch.position_ids.to(device),
        "attention_mask": additive_mask(batch.allowed, parameter.dtype).to(device),
    }


def completion_columns(batch: PackedBatch, completion_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each completion token is predicted in a packed batch: (row, column, completion_mask), each (n, gen_len).

    Token j of a text is predicted at its prefix's last column (j = 0) or at the column of token j - 1 of its own
    suffix; positions beyond a completion point at its prefix's last column (masked)."""
    gen_len = max(len(c) for c in completion_ids)
    lengths = torch.tensor([len(c) for c in completion_ids])
    offsets = torch.arange(gen_len)
    mask = offsets[None, :] < lengths[:, None]  # (n, gen_len)
    columns = torch.where(offsets[None, :] == 0, batch.prefix_last[:, None], batch.suffix_start[:, None] + offsets[None, :] - 1)
    columns = torch.where(mask, columns, batch.prefix_last[:, None])
    return batch.last[0][:, None].expand_as(columns), columns, mask


def packed_completion_logits(
    model: torch.nn.Module, prompt_ids, completion_ids, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What `models.completion_logits` returns, from one packed pass: each prompt written once before all its
    completions (the G completions of a GRPO group, DPO's chosen and rejected), no padding inside a row.

    Returns logits (n, gen_len, vocab), targets (n, gen_len) and completion_mask (n, gen_len), gen_len the longest
    completion. Differentiable. Equal to the padded pass's up to float rounding.
    """
    batch = _pack_completions(prompt_ids, completion_ids, pad_id, _segment_cap(model))
    parameter = next(model.parameters())
    logits = model(**_packed_inputs(batch, parameter)).logits  # (rows, width, vocab)
    rows, columns, mask = completion_columns(batch, completion_ids)
    targets = torch.zeros(mask.shape, dtype=torch.long)
    for i, completion in enumerate(completion_ids):
        targets[i, : len(completion)] = torch.as_tensor(list(completion), dtype=torch.long)
    device = parameter.device
    return logits[rows.to(device), columns.to(device)], targets.to(device), mask.to(device)


def packed_completion_values(value_model: torch.nn.Module, prompt_ids, completion_ids, pad_id: int) -> torch.Tensor:
    """What `models.completion_values` returns (V(state before completion token j), 0 beyond each completion), from one
    packed pass of a `models.TokenValues` model: -> (n, gen_len). Differentiable."""
    batch = _pack_completions(prompt_ids, completion_ids, pad_id, _segment_cap(value_model))
    parameter = next(value_model.parameters())
    values = value_model(**_packed_inputs(batch, parameter))  # (rows, width)
    rows, columns, mask = completion_columns(batch, completion_ids)
    device = parameter.device
    return values[rows.to(device), columns.to(device)] * mask.to(device)
