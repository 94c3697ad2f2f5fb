"""The reward model's read-out direction in the residual stream, against the directions linear probes find for concepts.

The maths (a decoder `*ForSequenceClassification` reward model, read at the text's last token):

    reward = w . norm(h) - offset                      h: (d_model,) the final residual stream (before the final norm)
    LayerNorm (GPT-2, GPT-NeoX):  norm(h) = g * (h - mean(h)) / s(h) + b,   s(h) = sqrt(var(h) + eps)
    RMSNorm (Llama, Qwen):        norm(h) = g * h / s(h),                    s(h) = sqrt(mean(h^2) + eps)

with w the score head's weights (d_model,), g the norm's gain, b its bias. So

    reward = r . h / s(h) + (w . b - offset),   r = P (w * g)

where P removes the mean over d_model (P = I - 11^T/d_model) for LayerNorm and is the identity for RMSNorm (the mean
subtraction makes the all-ones direction invisible: (w*g).(h - mean(h)) = P(w*g).h). `r` is the read-out direction:
the residual-stream direction the reward is linear in, up to the per-text scale 1/s(h). `reward_readout_direction`
computes it from a model, `readout_direction` from the two weight vectors.

What the comparison means. `r` lives at one site: the final residual stream, before the final norm. A probe
direction fitted on layer l's residual stream lives in the same basis (the residual stream is a sum that every block
adds to), so cosine(r, c_l) says how strongly the reward's read-out would weigh the concept's direction *if that
direction reached the last layer unchanged*. Later blocks may move, amplify or erase it, so a low cosine at an early
layer is no evidence that the reward ignores the concept, and a high one is no evidence the reward uses it. Mind the
site of the activations: HF's `hidden_states[l]` for l < n_layer is the residual stream entering block l, but
`hidden_states[-1]` is the final norm's *output*, where the read-out is `w` alone, not `r`; the final residual
itself is the input of the final norm (a forward pre-hook on it), or TransformerLens's
`blocks.{n_layer-1}.hook_resid_post`.

Filters and patterns. Both `r` and a logistic or ridge probe's direction are *filters* (weights that read a signal
out of the activations), not *patterns* (the direction along which the activations move with the concept; Haufe et
al., 2014): with correlated activations two filters can differ although they read the same signal. `concept_patterns`
gives a concept's pattern (how the activations move per unit of the label: the class-mean difference for a binary
concept), and cosine(r, pattern) reads as: how much the reward's read-out responds to the shift the concept makes in
the activations. A pattern is not a read-out, though: projecting the activations onto it picks up every signal that
varies along it, so its variance share is not the concept's alone. On the demo reward model (the quick run, 6,000
corpus texts, d_model 128, last token; layers 0-3 the residual entering each block, 4 the final residual) the two
kinds disagree sharply. The sentiment filter's cosine with the read-out is 0.05-0.12 at layers 1-4 (chance 0.09)
although its projection explains 85% of the reward's variance; the sentiment pattern's cosine rises to 0.97 at the
final residual. The "long text" pattern has cosine 0.3 and its projection explains half the reward's variance,
although length correlates with the reward at r = 0.07; the length filter stays below 0.04 and 1%. Use patterns to
ask "does the read-out respond to the shift this concept makes", filters and their variance share to ask "does a
read-out of this concept predict the reward".

Cosines between random directions in d_model dimensions are about N(0, 1/d_model): `meta["cosine_chance"]` =
1/sqrt(d_model) is one standard deviation. The sign follows the label coding: a classification probe's direction (and
a two-class pattern) points towards the second class in sorted order (True over False, "positive" over "negative"),
so a positive cosine means the read-out rises with that class.

The variance share is the behavioural side: the R^2 of the reward regressed (with an intercept) on the projection
of layer l's activations onto the concept direction, i.e. the squared correlation. It depends on the activations'
covariance and on the texts given; a direction fitted on the rewards themselves scores in sample, so its share is
optimistic. `readout_share` is the same R^2 for the read-out direction itself at each layer: the reward is exactly
r . h / s(h) + const at the final site, so there it is near 1 (exactly 1 on activations already divided by s(h)).

Shape glossary: n (texts), layer, d_model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.probes.linear import KINDS, ONE_BLAS_THREAD, Kind, _codes, _fit

__all__ = [
    "DirectionAlignmentResult",
    "concept_patterns",
    "probe_directions",
    "readout_direction",
    "reward_direction_alignment",
    "reward_readout_direction",
]


@dataclass(frozen=True, eq=False)
class DirectionAlignmentResult(Result):
    """The reward model's read-out direction against each concept's probe direction, one row per (concept, layer).

    Columns:
        concept: the concept the direction was probed for.
        layer: the layer of the activations (and of the concept direction).
        cosine: cosine similarity of the read-out direction and the concept direction at this layer (signed; see the
            module docstring for what it does and does not mean).
        variance_share: R^2 of the reward on the projection of this layer's activations onto the concept direction
            (share of the reward's variance over these texts that the 1-d projection explains).
        readout_share: the same R^2 for the projection onto the read-out direction itself (the same in every
            concept's row of a layer): what one direction can explain there.

    `meta`: n (texts), d_model, layers, concepts, cosine_chance (1 / sqrt(d_model), the sd of the cosine of two random
    directions), closest (per layer, the concept of largest |cosine|), reward_std.
    """

    columns: ClassVar[tuple[str, ...]] = ("concept", "layer", "cosine", "variance_share", "readout_share")
    heading: ClassVar[str] = "Reward read-out against concept directions"

    def headlines(self) -> list[tuple[str, str]]:
        last = self.df[self.df["layer"] == self.df["layer"].max()].dropna(subset=["cosine"])
        if not len(last):
            return []
        closest = last.loc[last["cosine"].abs().idxmax()]
        return [
            (
                f"concept closest to the reward read-out, last layer ({self.meta.get('stage')})",
                f"{closest['concept']} (cosine {closest['cosine']:+.2f})",
            )
        ]

    def plot(self, ax=None):
        """Cosine with the read-out (left, the band is +- 1/sqrt(d_model)) and reward variance share (right) by layer.
        With `ax` given (one axes), the cosine panel alone."""
        if ax is None:
            _, axes = views.new_figure(11.0, 3.6, ncols=2)  # (1, 2) axes
            ax, share_ax = axes[0]
        else:
            share_ax = None
        chance = float(self.meta.get("cosine_chance", 0.0))
        layers = sorted(self.df["layer"].unique())
        ax.axhspan(-chance, chance, color="grey", alpha=0.15, linewidth=0, label="±1/√d_model (random directions)")
        ax.axhline(0.0, color="black", linewidth=0.5)
        for concept, rows in self.df.groupby("concept", sort=False):
            ax.plot(rows["layer"], rows["cosine"], marker="o", label=str(concept))
        ax.set_xticks(layers)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine with the reward read-out")
        if share_ax is None:  # with both panels, the share panel's legend names the same colours
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        if share_ax is not None:
            for concept, rows in self.df.groupby("concept", sort=False):
                share_ax.plot(rows["layer"], rows["variance_share"], marker="o", label=str(concept))
            readout = self.df.drop_duplicates("layer").sort_values("layer")
            share_ax.plot(readout["layer"], readout["readout_share"], color="black", linestyle="--", label="read-out direction")
            share_ax.set_xticks(layers)
            share_ax.set_ylim(0.0, 1.02)
            share_ax.set_xlabel("layer")
            share_ax.set_ylabel("share of reward variance (R²)")
            share_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(
            self.plot().figure, "cosine of concept directions with the reward read-out, and reward variance they explain"
        )

    def table_html(self) -> Markup:
        facts = views.key_values(
            [
                ("texts", self.meta.get("n")),
                ("d_model", self.meta.get("d_model")),
                ("cosine of random directions (1 sd)", self.meta.get("cosine_chance")),
            ]
        )
        last = self.df[self.df["layer"] == self.df["layer"].max()]
        return (
            facts
            + views.table(last, caption=f"At the last layer ({last['layer'].iloc[0] if len(last) else '–'}): cosine and variance share")
            + views.details("Every concept and layer", views.table(self.df, max_rows=None))
        )


# --------------------------------------------------------------------------- directions


@ONE_BLAS_THREAD
def probe_directions(
    activations: np.ndarray, labels: np.ndarray, *, kind: Kind = "classification", l2: float = 1.0, max_iter: int = 100
) -> np.ndarray:  # (layer, d_model)
    """Each layer's probe direction in the original (unstandardised) activation space: (n, layer, d_model) -> (layer,
    d_model).

    The probe of `probe_layers` (standardise, then L2-penalised logistic or ridge regression, same `l2` and
    `max_iter`) is fitted on all texts at each layer. Its decision function is w_std . (x - mean) / scale + b, i.e. (w_std / scale) . x + const,
    so the direction returned is w_std / scale (per feature): the weights the probe puts on the raw activations, in
    logit (or label) units per unit of activation. For classification the concept must have two classes and the
    direction points towards the second in sorted order; for a concept with more classes probe one class against the
    rest (`labels == "positive"`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = np.asarray(activations, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 3 or labels.shape != (x.shape[0],):
        raise ValueError(f"activations must be (n, layer, d_model) and labels (n,); got shapes {x.shape} and {labels.shape}")
    if kind == "classification":
        y, classes = _codes(labels)
        if len(classes) != 2:
            raise ValueError(
                f"probe_directions finds one direction per layer, so a classification concept needs exactly two classes; "
                f"got {len(classes)} ({classes[:6]}). Probe one class against the rest, e.g. labels == {classes[-1]!r}"
            )
    else:
        y = labels.astype(float)
    directions = np.zeros((x.shape[1], x.shape[2]))
    for layer in range(x.shape[1]):
        probe, _ = _fit(x[:, layer, :], y, kind, l2, max_iter)
        scaler, model = probe[0], probe[-1]
        directions[layer] = np.ravel(model.coef_) / scaler.scale_
    return directions


def concept_patterns(activations: np.ndarray, labels: np.ndarray) -> np.ndarray:  # (layer, d_model)
    """Each layer's concept pattern (Haufe et al., 2014): the slope of every activation on the label, cov(x_j, y) /
    var(y): (n, layer, d_model) -> (layer, d_model).

    For a binary concept (`labels` bool or 0/1, or two classes, coded in sorted order) it is exactly the class-mean
    difference, mean(x | second class) - mean(x | first class); for a number (the reward, a length) the change in the
    activations per unit of it. No fitting and no regularisation: it is a property of the activations, confounds
    included (see the module docstring for patterns against filters).
    """
    x = np.asarray(activations, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 3 or labels.shape != (x.shape[0],):
        raise ValueError(f"activations must be (n, layer, d_model) and labels (n,); got shapes {x.shape} and {labels.shape}")
    if np.issubdtype(labels.dtype, np.number) or labels.dtype == bool:
        y = labels.astype(np.float64)
    else:
        codes, classes = _codes(labels)
        if len(classes) != 2:
            raise ValueError(
                f"concept_patterns needs numbers or two classes, got {len(classes)} classes ({classes[:6]}); pass labels == one class"
            )
        y = codes.astype(np.float64)
    y = y - y.mean()
    variance = float(y @ y)
    if not variance > 0:
        raise ValueError("labels are constant: a concept pattern needs labels that vary")
    return np.einsum("n,nld->ld", y, x) / variance


def readout_direction(score_weight: np.ndarray, norm_gain: np.ndarray, *, centred: bool = True) -> np.ndarray:  # (d_model,)
    """The reward's read-out direction in the residual stream: P (w * g), with P removing the mean over d_model when
    the final norm centres (LayerNorm, `centred=True`) and the identity when it does not (RMSNorm). See the module
    docstring for the derivation."""
    w, g = np.ravel(np.asarray(score_weight, dtype=np.float64)), np.ravel(np.asarray(norm_gain, dtype=np.float64))
    if w.shape != g.shape:
        raise ValueError(f"score_weight and norm_gain must both be (d_model,), got shapes {w.shape} and {g.shape}")
    r = w * g
    return r - r.mean() if centred else r


def reward_readout_direction(reward_model) -> np.ndarray:  # (d_model,)
    """`readout_direction` of a HF decoder `*ForSequenceClassification` reward model (one label): its `score` head's
    weights through the gain of the final norm (GPT-2 `ln_f`, Llama `norm`, GPT-NeoX `final_layer_norm`: the
    backbone's one direct child that is a norm), centred for a `torch.nn.LayerNorm`."""
    import torch

    from rlhf_lens import models
    from rlhf_lens.analyses.probes.steering import final_norm

    models.require_score_head(reward_model)
    weight = reward_model.score.weight.detach().double().cpu().numpy()
    if weight.shape[0] != 1:
        raise ValueError(f"reward_readout_direction needs a score head with one output (a scalar reward), got {weight.shape[0]}")
    norm = final_norm(reward_model)
    gain = norm.weight.detach().double().cpu().numpy()
    return readout_direction(weight[0], gain, centred=isinstance(norm, torch.nn.LayerNorm))


# --------------------------------------------------------------------------- alignment


def _r2(projection: np.ndarray, rewards: np.ndarray) -> float:
    """R^2 of rewards on one regressor with an intercept: the squared Pearson correlation (NaN if either is constant)."""
    p, r = projection - projection.mean(), rewards - rewards.mean()
    denominator = math.sqrt(float(p @ p) * float(r @ r))
    return float((p @ r) ** 2 / denominator**2) if denominator > 0 else math.nan


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norms) if norms > 0 else math.nan


def reward_direction_alignment(
    reward_direction: np.ndarray,
    concept_directions: Mapping[str, np.ndarray],
    activations: np.ndarray,
    rewards: np.ndarray,
    *,
    layers: Sequence[int] | None = None,
) -> DirectionAlignmentResult:
    """Cosine of the read-out direction with each concept's direction at each layer, and the share of the reward's
    variance each concept direction explains there (see the module docstring for the maths and the caveats).

    reward_direction: (d_model,) the read-out (`reward_readout_direction`). concept_directions: {concept: (layer,
    d_model)} (`probe_directions`). activations: (n, layer, d_model), the activations the directions were probed on.
    rewards: (n,) each text's reward. layers: what to call each slice of the layer axis (default 0, 1, ...).
    """
    r = np.ravel(np.asarray(reward_direction, dtype=np.float64))
    x = np.asarray(activations, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != r.shape[0]:
        raise ValueError(f"activations must be (n, layer, d_model) with d_model = {r.shape[0]} (the reward direction's), got {x.shape}")
    if rewards.shape != (x.shape[0],) or not np.isfinite(rewards).all():
        raise ValueError(f"rewards must be (n,) = ({x.shape[0]},) finite numbers, got shape {rewards.shape}")
    if not concept_directions:
        raise ValueError("concept_directions is empty; pass {concept: probe_directions(...)}")
    names = list(range(x.shape[1])) if layers is None else [int(layer) for layer in layers]
    if len(names) != x.shape[1]:
        raise ValueError(f"layers names {len(names)} layers but activations have {x.shape[1]}")
    readout_share = [_r2(x[:, i, :] @ r, rewards) for i in range(x.shape[1])]
    rows = []
    for concept, directions in concept_directions.items():
        directions = np.asarray(directions, dtype=np.float64)
        if directions.shape != x.shape[1:]:
            raise ValueError(f"concept_directions[{concept!r}] must be (layer, d_model) = {x.shape[1:]}, got {directions.shape}")
        for i, name in enumerate(names):
            c = directions[i]
            rows.append(
                {
                    "concept": str(concept),
                    "layer": name,
                    "cosine": _cosine(r, c),
                    "variance_share": _r2(x[:, i, :] @ c, rewards),
                    "readout_share": readout_share[i],
                }
            )
    df = pd.DataFrame(rows)
    closest = {
        str(layer): (str(rows.loc[rows["cosine"].abs().idxmax(), "concept"]) if rows["cosine"].notna().any() else None)
        for layer, rows in df.groupby("layer")
    }
    meta = {
        "n": int(x.shape[0]),
        "d_model": int(r.shape[0]),
        "layers": names,
        "concepts": [str(c) for c in concept_directions],
        "cosine_chance": 1.0 / math.sqrt(r.shape[0]),
        "closest": closest,
        "reward_std": float(rewards.std()),
    }
    return DirectionAlignmentResult(df=df, meta=meta)
