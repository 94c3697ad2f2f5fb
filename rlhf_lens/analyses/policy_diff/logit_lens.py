"""The logit lens (nostalgebraist, 2020) on two policies: where in depth their next-token predictions part.

The residual stream after block l is read out as if it were the last layer: log_softmax(unembed(final_norm(h_l))),
with the model's own final norm and unembedding. After the last block this is exactly the model's output (tested).
For each completion token of each text, at each layer l of both models (the aligned policy and its reference, the
same tokens fed to both):

    kl             KL(pi_l || ref_l), the two models' lens distributions against each other (nats)
    logprob        log pi_l(y_t | ...): the aligned model's lens log-prob of the completion's actual token
    ref_logprob    the same for the reference
    kl_to_final    KL(pi_l || pi_L): how far the aligned model's layer-l prediction is from its output

Where `kl` first rises is where the alignment change enters the predictions; a change that appears only at the last
layers is a change in the read-out, one that appears early is carried through the stream.

Shape glossary: layer, batch, seq, gen_len, vocab, d_model.
"""

from __future__ import annotations

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
from rlhf_lens.analyses.probes.steering import final_norm, transformer_blocks

__all__ = ["LogitLensResult", "lens_logprobs", "logit_lens_diff", "residual_after_blocks"]


@torch.no_grad()
def residual_after_blocks(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The residual stream leaving every block: (batch, seq) -> (layer, batch, seq, d_model), before the final norm."""
    captured: list[torch.Tensor] = []
    handles = [
        block.register_forward_hook(lambda _m, _i, output: captured.append(output[0] if isinstance(output, tuple) else output))
        for block in transformer_blocks(model)
    ]
    try:
        model.base_model(input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(captured)


@torch.no_grad()
def lens_logprobs(model: torch.nn.Module, residual: torch.Tensor) -> torch.Tensor:
    """Each layer's residual read out through the model's final norm and unembedding: (..., d_model) -> (..., vocab)
    log-probabilities."""
    unembed = model.get_output_embeddings()
    if unembed is None:
        raise TypeError(f"{type(model).__name__} has no output embedding (LM head); the logit lens reads a causal LM")
    return torch.log_softmax(unembed(final_norm(model)(residual)).float(), dim=-1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:  # (..., vocab) -> (...)
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.no_grad()
def logit_lens_diff(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence,
    *,
    batch_size: int = 16,
    meta: dict | None = None,
) -> LogitLensResult:
    """The logit lens of `policy` and `reference` on the same (prompt, completion) texts (completions as texts or token
    ids), per layer and completion position; see the module docstring for the columns."""
    from rlhf_lens.analyses.attribution.policy import completion_parts

    if len(transformer_blocks(policy)) != len(transformer_blocks(reference)):
        raise ValueError("the two models have different numbers of blocks; the logit lens compares layer by layer")
    parts = completion_parts(policy, tokenizer, prompts, completions)
    models.check_vocab_fits(reference, tokenizer, where="reference")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(policy.parameters()).device
    frames = []
    for start in range(0, len(parts), batch_size):
        chunk = parts[start : start + batch_size]
        ids, mask = models.pad_right([p + c for p, c in chunk], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        predict_at, completion_mask = models.completion_positions([p for p, _ in chunk], [c for _, c in chunk], ids.shape[1], device)
        targets = torch.gather(ids, 1, (predict_at + 1).clamp(max=ids.shape[1] - 1))  # (batch, gen_len)
        lens = {}
        for name, model in (("policy", policy), ("reference", reference)):
            residual = residual_after_blocks(model, ids, mask)  # (layer, batch, seq, d_model)
            at = predict_at[None, :, :, None].expand(residual.shape[0], -1, -1, residual.shape[-1])
            lens[name] = lens_logprobs(model, torch.gather(residual, 2, at))  # (layer, batch, gen_len, vocab)
        p, r = lens["policy"], lens["reference"]
        picked = targets[None, :, :, None].expand(p.shape[0], -1, -1, 1)
        columns = {
            "kl": _kl(p, r),
            "logprob": torch.gather(p, -1, picked)[..., 0],
            "ref_logprob": torch.gather(r, -1, picked)[..., 0],
            "kl_to_final": _kl(p, p[-1:].expand_as(p)),
        }  # each (layer, batch, gen_len)
        layer, batch, position = np.meshgrid(np.arange(p.shape[0]), np.arange(p.shape[1]), np.arange(p.shape[2]), indexing="ij")
        keep = completion_mask[None].expand(p.shape[0], -1, -1).cpu().numpy()
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer[keep],
                    "text": batch[keep] + start,
                    "position": position[keep],
                    **{k: v.cpu().numpy()[keep] for k, v in columns.items()},
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    by_layer = df.groupby("layer")["kl"].mean()
    facts = {
        "texts": len(parts),
        "layers": int(df["layer"].max()) + 1,
        "mean_kl_by_layer": [float(v) for v in by_layer],
        "final_kl": float(by_layer.iloc[-1]),
        "first_layer_half_final": _first_layer_reaching(by_layer.to_numpy(), 0.5),
    }
    return LogitLensResult(df=df, meta={**(meta or {}), **facts})


def _first_layer_reaching(kl_by_layer: np.ndarray, share: float) -> int | None:
    """The first layer whose mean KL reaches `share` of the last layer's (None when the last layer's is 0)."""
    final = kl_by_layer[-1]
    if not final > 0:
        return None
    return int(np.argmax(kl_by_layer >= share * final))


@dataclass(frozen=True, eq=False)
class LogitLensResult(Result):
    """The logit lens of an aligned policy and its reference, one row per (layer, text, completion position).

    Columns: layer (0..L-1: after block l; L-1 is the model's output), text, position (completion token index), kl,
    logprob, ref_logprob, kl_to_final (module docstring). `meta`: texts, layers, mean_kl_by_layer, final_kl,
    first_layer_half_final (the first layer whose mean KL reaches half the output's), and what was compared.
    """

    columns: ClassVar[tuple[str, ...]] = ("layer", "text", "position", "kl", "logprob", "ref_logprob", "kl_to_final")
    heading: ClassVar[str] = "Logit lens: where the two policies' predictions part"

    def by_layer(self) -> pd.DataFrame:
        """Per layer: the mean of every column over texts and positions."""
        return self.df.drop(columns=["text", "position"]).groupby("layer", as_index=False).mean()

    def headlines(self) -> list[tuple[str, str]]:
        final, first = self.meta.get("final_kl"), self.meta.get("first_layer_half_final")
        if final is None or not math.isfinite(final):
            return []
        where = f", half of it by layer {first}" if first is not None else ""
        return [(f"logit lens ({self.meta.get('stage')}): KL(aligned || reference) at the output", f"{final:.3g} nats per token{where}")]

    def plot(self, ax=None):
        """With `ax`: mean KL by layer. Without: that with the actual token's lens log-prob, and the KL heatmap."""
        table = self.by_layer()
        if ax is None:
            _, axes = views.new_figure(11.0, 3.4, ncols=2)
            ax, heat_ax = axes[0]
        else:
            heat_ax = None
        ax.plot(table["layer"], table["kl"], marker="o", color="tab:red", label="KL(aligned || reference)")
        ax.set_xlabel("layer (after block)")
        ax.set_ylabel("KL per token (nats)")
        ax.set_xticks(table["layer"])
        if heat_ax is not None:
            twin = ax.twinx()
            twin.plot(table["layer"], table["logprob"], marker="s", linestyle="--", color="tab:blue", label="aligned: log p(token)")
            twin.plot(table["layer"], table["ref_logprob"], marker="^", linestyle=":", color="tab:grey", label="reference: log p(token)")
            twin.set_ylabel("lens log-prob of the completion's token")
            lines = ax.get_legend_handles_labels()
            twin_lines = twin.get_legend_handles_labels()
            ax.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], fontsize=7, loc="upper left")
            grid = self.df.groupby(["layer", "position"])["kl"].mean().unstack("position")  # (layer, position)
            image = heat_ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap="Reds")
            heat_ax.set_xlabel("completion position")
            heat_ax.set_ylabel("layer (after block)")
            heat_ax.set_yticks(range(len(grid.index)), list(grid.index))
            heat_ax.figure.colorbar(image, ax=heat_ax, label="mean KL (nats)")
            heat_ax.set_title("KL(aligned || reference) by layer and position", fontsize=9)
            ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "the two policies' logit-lens KL by layer and completion position")

    def table_html(self) -> Markup:
        return views.table(self.by_layer(), caption="Per layer, means over texts and completion positions")
