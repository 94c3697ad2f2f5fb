"""What alignment changed in the weights: per tensor, the size of the update and whether it is low-rank.

For each weight tensor W present in both checkpoints, with delta = W_after - W_before:

    relative = ||delta||_F / ||W_before||_F            how far the tensor moved, against its own size
    s_1 >= s_2 >= ...                                   singular values of delta (matrices only)
    top1_share = s_1^2 / sum_i s_i^2                    share of the update's energy in its top direction
    effective_rank = exp(H(p)),  p_i = s_i^2 / sum s^2  the entropy rank (Roy and Vetterli, 2007): 1 for a rank-1
                                                        update, the full rank for an isotropic one

A policy update concentrated in a few directions (top1_share near 1, effective rank small against the matrix's
rank) is what LoRA-style analyses expect of fine-tuning (Hu et al., 2021); a diffuse one spreads over many.
The weights are read from the checkpoints' safetensors files (`rlhf_lens.runs.weights.read_weights`): no model is
built. Tied tensors (an LM head saved as the embedding) appear once, under the name the file gives them.

Shape glossary: rows, cols (of one weight matrix).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.result import Result

__all__ = ["WeightDiffResult", "delta_spectrum", "weight_diff"]


def delta_spectrum(delta: torch.Tensor) -> np.ndarray:  # (rows, cols) -> (min(rows, cols),)
    """The singular values of a weight update, largest first (float64)."""
    if delta.ndim != 2:
        raise ValueError(f"delta_spectrum needs a matrix, got a tensor of shape {tuple(delta.shape)}")
    return torch.linalg.svdvals(delta.double()).numpy()


def _rank_figures(singular: np.ndarray) -> tuple[float, float]:
    """(top1_share, effective_rank) of a spectrum; NaN for an update of zero."""
    energy = singular**2
    total = float(energy.sum())
    if total <= 0.0:
        return math.nan, math.nan
    p = energy / total
    nonzero = p[p > 0]
    return float(p[0]), float(math.exp(-(nonzero * np.log(nonzero)).sum()))


def weight_diff(
    before: Mapping[str, torch.Tensor] | str | Path,
    after: Mapping[str, torch.Tensor] | str | Path,
    *,
    top_singular: int = 8,
    meta: Mapping | None = None,
) -> WeightDiffResult:
    """Per weight tensor, the update from `before` to `after` (state dicts or checkpoint folders); see the module
    docstring. Both must hold the same tensor names with the same shapes. The `top_singular` largest singular values
    of each matrix's update are kept (columns sv_1 ... sv_<top_singular>)."""
    from rlhf_lens.runs.weights import read_weights

    if top_singular < 1:
        raise ValueError(f"top_singular must be at least 1, got {top_singular}")
    before_weights = read_weights(before) if isinstance(before, str | Path) else dict(before)
    after_weights = read_weights(after) if isinstance(after, str | Path) else dict(after)
    missing, extra = sorted(set(before_weights) - set(after_weights)), sorted(set(after_weights) - set(before_weights))
    if missing or extra:
        raise ValueError(
            f"the two checkpoints hold different tensors (only before: {missing[:5]}, only after: {extra[:5]}); "
            "compare checkpoints of one architecture, e.g. a policy stage's start and final"
        )
    rows = []
    for name in sorted(before_weights):
        w0, w1 = before_weights[name], after_weights[name]
        if w0.shape != w1.shape:
            raise ValueError(f"tensor {name!r} has shape {tuple(w0.shape)} before and {tuple(w1.shape)} after")
        if not w0.is_floating_point():
            continue  # integer buffers (position ids) are not weights
        delta = w1.double() - w0.double()
        norm, delta_norm = float(w0.double().norm()), float(delta.norm())
        row = {
            "name": name,
            "shape": "x".join(map(str, w0.shape)),
            "numel": int(w0.numel()),
            "norm": norm,
            "delta_norm": delta_norm,
            "relative": delta_norm / norm if norm > 0 else (0.0 if delta_norm == 0 else math.inf),  # a zero-initialised bias
            "top1_share": math.nan,
            "effective_rank": math.nan,
            "full_rank": math.nan,
        }
        if w0.ndim == 2:
            singular = delta_spectrum(delta)
            row["top1_share"], row["effective_rank"] = _rank_figures(singular)
            row["full_rank"] = min(w0.shape)
            for i in range(top_singular):
                row[f"sv_{i + 1}"] = float(singular[i]) if i < len(singular) else math.nan
        rows.append(row)
    df = pd.DataFrame(rows)
    for i in range(top_singular):
        if f"sv_{i + 1}" not in df:
            df[f"sv_{i + 1}"] = math.nan
    df = df.sort_values("delta_norm", ascending=False, kind="stable").reset_index(drop=True)
    total_before = math.sqrt(float((df["norm"] ** 2).sum()))
    total_delta = math.sqrt(float((df["delta_norm"] ** 2).sum()))
    facts = {
        "tensors": len(df),
        "parameters": int(df["numel"].sum()),
        "relative_total": total_delta / total_before if total_before > 0 else math.nan,
        "largest": str(df["name"].iloc[0]) if len(df) else None,
        "top_singular": top_singular,
    }
    return WeightDiffResult(df=df, meta={**(meta or {}), **facts})


@dataclass(frozen=True, eq=False)
class WeightDiffResult(Result):
    """The update of every weight tensor between two checkpoints, largest update first.

    Columns: name (the tensor's name in the checkpoint), shape, numel, norm (||W_before||_F), delta_norm
    (||W_after - W_before||_F), relative (delta_norm / norm), top1_share and effective_rank of the update's singular
    values and full_rank (min(rows, cols)) for matrices (NaN for vectors), sv_1 ... sv_<top_singular> (the largest
    singular values of the update). `meta`: tensors, parameters, relative_total (the whole model's relative change),
    largest (the tensor of largest update), top_singular, and what was compared (stage, before, after).
    """

    columns: ClassVar[tuple[str, ...]] = ("name", "shape", "numel", "norm", "delta_norm", "relative", "top1_share", "effective_rank")
    heading: ClassVar[str] = "Weight diff"

    def headlines(self) -> list[tuple[str, str]]:
        if not len(self.df):
            return []
        top = self.df.iloc[0]
        return [
            (
                f"weight update ({self.meta.get('stage')}): all weights, largest tensor",
                f"{self.meta.get('relative_total') or 0.0:.3g}; {top['name']}",
            )
        ]

    def plot(self, ax=None, n: int = 16):
        """With `ax`: the `n` largest relative updates. Without: that, and the normalised spectra of the largest
        matrix updates."""
        if ax is None:
            _, axes = views.new_figure(11.0, max(3.0, 0.22 * n + 1.0), ncols=2)
            ax, spectrum_ax = axes[0]
        else:
            spectrum_ax = None
        shown = self.df.sort_values("relative", ascending=False).head(n)
        y = np.arange(len(shown))[::-1]
        ax.barh(y, shown["relative"], color="tab:purple")
        ax.set_yticks(y, list(shown["name"]), fontsize=7)
        ax.set_xlabel("||ΔW|| / ||W||")
        ax.set_title("largest relative updates", fontsize=9)
        if spectrum_ax is not None:
            matrices = self.df.dropna(subset=["top1_share"]).head(5)
            ranks = np.arange(1, int(self.meta["top_singular"]) + 1)
            for _, row in matrices.iterrows():
                values = np.array([row[f"sv_{i}"] for i in ranks], dtype=float)
                spectrum_ax.plot(ranks, values / values[0], marker="o", label=f"{row['name']} (eff. rank {row['effective_rank']:.1f})")
            spectrum_ax.set_xlabel("singular value index")
            spectrum_ax.set_ylabel("s_i / s_1 of the update")
            spectrum_ax.set_title("spectra of the largest updates (is the update low-rank?)", fontsize=9)
            spectrum_ax.legend(fontsize=7)
            ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "relative size of each weight tensor's update, and the spectra of the largest")

    def table_html(self) -> Markup:
        facts = views.key_values(
            [
                ("compared", f"{self.meta.get('before', '–')} → {self.meta.get('after', '–')}"),
                ("tensors / parameters", f"{self.meta.get('tensors')} / {self.meta.get('parameters')}"),
                ("relative change of all weights", self.meta.get("relative_total")),
            ]
        )
        columns = ["name", "shape", "relative", "delta_norm", "top1_share", "effective_rank", "full_rank", "sv_1", "sv_2", "sv_3"]
        columns = [c for c in columns if c in self.df]  # top_singular may keep fewer than three
        return facts + views.table(self.df, columns=columns, max_rows=20, caption="Tensors by size of update (largest first)")
