"""Activation patching between an aligned policy and its reference: which layers carry the alignment change?

The texts are (prompt, completion) pairs, typically the aligned policy's own samples. The metric is the completion's
summed log-probability, which alignment raised: lp_aligned > lp_reference on average. Run the reference with one
activation replaced by the aligned model's (same text, same positions) and measure how much of the gain returns:

    restored = mean_texts(lp_patched - lp_reference) / mean_texts(lp_aligned - lp_reference)

0 means the patched activation carries none of the change, 1 all of it. Sites (the layer naming of
`probes.activations`): resid_pre (the residual entering block l), attn_out and mlp_out (what block l's attention and
MLP add), resid_post (the residual leaving block l). Patching resid_pre at layer l replaces everything the aligned
model computed below l; patching attn_out or mlp_out replaces one component's contribution only.
`patch_positions` patches the residual one position at a time (relative to the completion's first token).

The patched model's log-probs are read out through the reference's own final norm and unembedding, or, with
`readout="policy"`, through the aligned model's: patching the aligned model's last residual (resid_post of the last
block) at every position and reading out through the aligned head reproduces the aligned model exactly (tested),
and patching nothing reproduces the reference.

Hooks are plain PyTorch forward hooks on the HF modules (`probes.steering.transformer_blocks`, `block_part`), the
same fallback the activation collector uses where TransformerLens's bridge cannot boot a model.

Shape glossary: batch, seq, gen_len, d_model, layer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from markupsafe import Markup

from rlhf_lens import models, views
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.policy_diff.logit_lens import lens_logprobs, residual_after_blocks
from rlhf_lens.analyses.probes.steering import block_part, transformer_blocks

__all__ = ["SITES", "PatchingResult", "PositionPatchingResult", "activation_patching", "capture", "patch_positions", "patched_logprobs"]

SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")
READOUTS = ("reference", "policy")


def _module(model: torch.nn.Module, site: str, layer: int) -> torch.nn.Module:
    block = transformer_blocks(model)[layer]
    return block if site in ("resid_pre", "resid_post") else block_part(block, site)


def _output(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


@torch.no_grad()
def capture(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, site: str) -> list[torch.Tensor]:
    """`site` at every layer of `model` on (batch, seq) inputs: a list over layers of (batch, seq, d_model)."""
    captured: list[torch.Tensor] = []
    handles = []
    for layer in range(len(transformer_blocks(model))):
        module = _module(model, site, layer)
        if site == "resid_pre":
            handles.append(
                module.register_forward_pre_hook(lambda _m, args, kwargs: captured.append(_hidden(args, kwargs)), with_kwargs=True)
            )
        else:
            handles.append(module.register_forward_hook(lambda _m, _i, output: captured.append(_output(output))))
    try:
        model.base_model(input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _patch(model: torch.nn.Module, site: str, layer: int, value: torch.Tensor, where: torch.Tensor | None):
    """Replace `site` at `layer` by `value` (batch, seq, d_model), at the (batch, seq) positions `where` (all: None)."""
    module = _module(model, site, layer)

    def blend(current: torch.Tensor) -> torch.Tensor:
        return value if where is None else torch.where(where[..., None], value, current)

    if site == "resid_pre":

        def pre_hook(_m, args, kwargs):
            if args:
                return (blend(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": blend(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        handle = module.register_forward_hook(lambda _m, _i, output: _replace(output, blend(_output(output))))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def patched_logprobs(
    reference: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    readout_model: torch.nn.Module,
    patch: tuple[str, int, torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """(batch, seq, vocab) log-probs of the reference run on (batch, seq) inputs with `patch` = (site, layer, value,
    where) applied (None: unpatched), read out from its last residual through `readout_model`'s final norm and
    unembedding."""
    with _patch(reference, *patch) if patch is not None else contextlib.nullcontext():
        residual = residual_after_blocks(reference, ids, mask)[-1]  # (batch, seq, d_model)
    return lens_logprobs(readout_model, residual)


def _completion_logprob(logprobs: torch.Tensor, ids: torch.Tensor, predict_at: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of each completion: (batch, seq, vocab) -> (batch,)."""
    targets = torch.gather(ids, 1, (predict_at + 1).clamp(max=ids.shape[1] - 1))  # (batch, gen_len)
    at = torch.gather(logprobs, 1, predict_at[:, :, None].expand(-1, -1, logprobs.shape[-1]))  # (batch, gen_len, vocab)
    picked = torch.gather(at, -1, targets[:, :, None])[..., 0]
    return (picked * completion_mask).sum(-1)


class _Batch:
    """One batch of texts, tokenised and right-padded, with where the completion tokens are predicted."""

    def __init__(self, parts, pad_id: int, device):
        self.parts = parts
        self.ids, self.mask = (t.to(device) for t in models.pad_right([p + c for p, c in parts], pad_id))
        self.predict_at, self.completion_mask = models.completion_positions(
            [p for p, _ in parts], [c for _, c in parts], self.ids.shape[1], device
        )
        self.starts = torch.tensor([len(p) for p, _ in parts], device=device)  # (batch,) first completion position


def _batches(policy, tokenizer, prompts, completions, batch_size: int):
    from rlhf_lens.analyses.attribution.policy import completion_parts

    parts = completion_parts(policy, tokenizer, prompts, completions)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(policy.parameters()).device
    return [_Batch(parts[i : i + batch_size], pad_id, device) for i in range(0, len(parts), batch_size)]


def _check(policy, reference, readout: str, sites: Sequence[str]) -> None:
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise ValueError(f"unknown site(s) {unknown}; sites are {SITES}")
    if len(transformer_blocks(policy)) != len(transformer_blocks(reference)):
        raise ValueError("the two models have different numbers of blocks; patching maps layer to layer")


def _restored(patched: np.ndarray, clean: np.ndarray, target: np.ndarray) -> float:
    gain = float(np.mean(target - clean))
    return float(np.mean(patched - clean)) / gain if gain != 0 else math.nan


@torch.no_grad()
def activation_patching(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence,
    *,
    sites: Sequence[str] = SITES,
    readout: str = "reference",
    batch_size: int = 16,
    meta: dict | None = None,
) -> PatchingResult:
    """For each site and layer, the share of the aligned model's log-prob gain on the completions that patching that
    activation (every position) into the reference restores; see the module docstring."""
    _check(policy, reference, readout, sites)
    readout_model = reference if readout == "reference" else policy
    batches = _batches(policy, tokenizer, prompts, completions, batch_size)
    n_layers = len(transformer_blocks(reference))
    clean, target = [], []
    patched = {(site, layer): [] for site in sites for layer in range(n_layers)}
    for b in batches:
        score = lambda logprobs, b=b: _completion_logprob(logprobs, b.ids, b.predict_at, b.completion_mask).cpu().numpy()  # noqa: E731
        clean.append(score(patched_logprobs(reference, b.ids, b.mask, readout_model=readout_model)))
        target.append(score(patched_logprobs(policy, b.ids, b.mask, readout_model=policy)))
        for site in sites:
            values = capture(policy, b.ids, b.mask, site)
            for layer in range(n_layers):
                logprobs = patched_logprobs(reference, b.ids, b.mask, readout_model=readout_model, patch=(site, layer, values[layer], None))
                patched[(site, layer)].append(score(logprobs))
    clean_all, target_all = np.concatenate(clean), np.concatenate(target)
    rows = [
        {
            "site": site,
            "layer": layer,
            "restored": _restored(np.concatenate(values), clean_all, target_all),
            "patched_logprob": float(np.concatenate(values).mean()),
        }
        for (site, layer), values in patched.items()
    ]
    facts = {
        "texts": int(len(clean_all)),
        "reference_logprob": float(clean_all.mean()),
        "policy_logprob": float(target_all.mean()),
        "gain": float((target_all - clean_all).mean()),
        "readout": readout,
    }
    return PatchingResult(df=pd.DataFrame(rows), meta={**(meta or {}), **facts})


@torch.no_grad()
def patch_positions(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence,
    *,
    site: str = "resid_pre",
    before: int = 4,
    after: int = 16,
    batch_size: int = 16,
    meta: dict | None = None,
) -> PositionPatchingResult:
    """For each layer and each position from `before` tokens before the completion to `after` tokens into it, the
    share of the aligned log-prob gain that patching `site` at that one position restores (the reference's read-out)."""
    _check(policy, reference, "reference", [site])
    batches = _batches(policy, tokenizer, prompts, completions, batch_size)
    n_layers = len(transformer_blocks(reference))
    offsets = list(range(-before, after))
    clean, target = [], []
    patched = {(layer, offset): ([], []) for layer in range(n_layers) for offset in offsets}  # (values, rows used)
    for b in batches:
        score = lambda logprobs, b=b: _completion_logprob(logprobs, b.ids, b.predict_at, b.completion_mask).cpu().numpy()  # noqa: E731
        clean.append(score(patched_logprobs(reference, b.ids, b.mask, readout_model=reference)))
        target.append(score(patched_logprobs(policy, b.ids, b.mask, readout_model=policy)))
        values = capture(policy, b.ids, b.mask, site)
        columns = torch.arange(b.ids.shape[1], device=b.ids.device)[None, :]  # (1, seq)
        for offset in offsets:
            position = b.starts + offset  # (batch,)
            rows = ((position >= 0) & (position < b.mask.sum(1))).cpu().numpy()
            where = (columns == position[:, None]) & b.mask.bool()  # (batch, seq)
            for layer in range(n_layers):
                logprobs = patched_logprobs(reference, b.ids, b.mask, readout_model=reference, patch=(site, layer, values[layer], where))
                patched[(layer, offset)][0].append(score(logprobs))
                patched[(layer, offset)][1].append(rows)
    clean_all, target_all = np.concatenate(clean), np.concatenate(target)
    records = []
    for (layer, offset), (values, used) in patched.items():
        keep = np.concatenate(used)
        value = np.concatenate(values)
        records.append(
            {
                "layer": layer,
                "offset": offset,
                "restored": _restored(value[keep], clean_all[keep], target_all[keep]) if keep.any() else math.nan,
                "texts": int(keep.sum()),
            }
        )
    facts = {"texts": int(len(clean_all)), "site": site, "gain": float((target_all - clean_all).mean())}
    return PositionPatchingResult(df=pd.DataFrame(records), meta={**(meta or {}), **facts})


@dataclass(frozen=True, eq=False)
class PatchingResult(Result):
    """Activation patching by site and layer, one row per (site, layer).

    Columns: site, layer, restored (the share of the aligned log-prob gain the patch restores; module docstring),
    patched_logprob (the completions' mean summed log-prob under the patched reference). `meta`: texts,
    reference_logprob, policy_logprob, gain, readout, and what was compared.
    """

    columns: ClassVar[tuple[str, ...]] = ("site", "layer", "restored", "patched_logprob")
    heading: ClassVar[str] = "Activation patching: which layers carry the alignment change"

    def restoring_layers(self, site: str = "resid_pre", share: float = 0.5) -> list[int]:
        """The layers where patching `site` restores at least `share` of the gain."""
        rows = self.df[(self.df["site"] == site) & (self.df["restored"] >= share)]
        return [int(layer) for layer in rows["layer"]]

    def headlines(self) -> list[tuple[str, str]]:
        layers = self.restoring_layers("resid_pre", 0.5)
        return [
            (
                f"patching ({self.meta.get('stage')}): residual layers restoring half the log-prob gain",
                ", ".join(map(str, layers)) or "none",
            )
        ]

    def plot(self, ax=None):
        if ax is None:
            _, ax = views.new_figure(6.0, 3.4)
        for site, rows in self.df.groupby("site", sort=False):
            ax.plot(rows["layer"], rows["restored"], marker="o", label=site)
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel("layer patched (aligned -> reference)")
        ax.set_ylabel("share of the log-prob gain restored")
        ax.set_xticks(sorted(self.df["layer"].unique()))
        ax.legend(fontsize=8)
        ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "share of the aligned log-prob gain restored by patching each site and layer")

    def table_html(self) -> Markup:
        wide = self.df.pivot_table(index="layer", columns="site", values="restored", sort=False).reset_index()
        return views.table(wide, caption="Share of the gain restored, by layer (rows) and site (columns)")


@dataclass(frozen=True, eq=False)
class PositionPatchingResult(Result):
    """Activation patching one position at a time, one row per (layer, offset).

    Columns: layer, offset (position relative to the completion's first token; negative: the prompt), restored,
    texts (those long enough to have that position). `meta`: texts, site, gain.
    """

    columns: ClassVar[tuple[str, ...]] = ("layer", "offset", "restored", "texts")
    heading: ClassVar[str] = "Activation patching by position"

    def plot(self, ax=None):
        if ax is None:
            _, ax = views.new_figure(8.0, 3.2)
        grid = self.df.pivot_table(index="layer", columns="offset", values="restored", sort=True)  # (layer, offset)
        limit = float(np.nanmax(np.abs(grid.to_numpy()))) if grid.notna().any().any() else 1.0
        image = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns], fontsize=7)
        ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index])
        ax.set_xlabel("position relative to the completion's first token")
        ax.set_ylabel(f"layer ({self.meta.get('site')})")
        ax.figure.colorbar(image, ax=ax, label="share of the gain restored")
        ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "share of the aligned log-prob gain restored by patching one position and layer")

    def table_html(self) -> Markup:
        return views.details("Every layer and position", views.table(self.df, max_rows=None))
