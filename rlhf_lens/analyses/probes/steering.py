"""The causal check of a probe direction: steer along it in the residual stream and measure what moves.

A probe that decodes a concept from layer l shows the concept is *there*; whether the model *uses* it is a causal
question. `steer_rewards` adds `scale * sd * direction` to the residual stream after block `layer` (HF's
`hidden_states[layer + 1]`) at the chosen positions, with a forward hook on the block, and reads the reward model's
reward; `sd` is the standard deviation of the unsteered residual's projection on the (unit) direction at those
positions, so scales are in natural units ("one standard deviation along the concept"). `steer_policy` does the
same while a policy samples, and scores the samples with a reward function (the task's gold reward).

A direction that probes well but moves nothing gets a warn verdict that says so.

Shape glossary: batch, seq, d_model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from markupsafe import Markup

from rlhf_lens import models, views
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict

__all__ = ["ConceptSteeringResult", "SteeringResult", "block_part", "final_norm", "steer_policy", "steer_rewards", "transformer_blocks"]

POSITIONS = ("all", "completion", "last")
"""Where `steer_rewards` can push: every real token, the completion's tokens, or the last real token."""


@dataclass(frozen=True, eq=False)
class SteeringResult(Result):
    """What moves when the residual stream is pushed along a direction, one row per steering scale.

    Columns:
        scale: the push, in standard deviations of the residual's projection on the direction (0: unsteered).
        mean: the mean outcome (reward, or the gold score of the policy's samples) over the texts.
        sem: its standard error.
        change: mean outcome minus the unsteered mean (paired over texts).
        change_sem: the standard error of that paired change.

    `meta`: what (reward/policy), concept, layer, positions, sd (the residual's sd along the unit direction), texts,
    slope (least-squares change per sd), z (the slope over its standard error), moves_z (the verdict's threshold on z).
    """

    columns: ClassVar[tuple[str, ...]] = ("scale", "mean", "sem", "change", "change_sem")
    heading: ClassVar[str] = "Steering along a direction"

    def headlines(self) -> list[tuple[str, str]]:
        slope = self.meta.get("slope")
        if slope is None or not math.isfinite(slope):
            return []
        return [
            (
                f"{self.meta.get('what')} change per sd along {self.meta.get('concept') or 'the direction'}",
                f"{slope:+.3g} (z {self.meta['z']:.1f})",
            )
        ]

    def plot(self, ax=None):
        if ax is None:
            _, ax = views.new_figure(5.0, 3.2)
        ax.errorbar(self.df["scale"], self.df["change"], yerr=self.df["change_sem"], marker="o", capsize=3)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel(f"push along {self.meta.get('concept') or 'the direction'} after block {self.meta.get('layer')} (sd)")
        ax.set_ylabel(f"change in {self.meta.get('what')}")
        ax.set_title(f"steering at {self.meta.get('positions')} positions, {self.meta.get('texts')} texts", fontsize=9)
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "change of the outcome as the residual stream is pushed along the direction")

    def table_html(self) -> Markup:
        return views.table(self.df, caption="Outcome at each steering scale (paired change against the unsteered run)")


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a HF decoder (causal LM or sequence classifier): the one non-empty ModuleList
    directly under `model.base_model` (GPT-2's transformer.h, Llama's model.layers, GPT-NeoX's gpt_neox.layers)."""
    base = getattr(model, "base_model", None)
    lists = [m for m in (base.children() if isinstance(base, torch.nn.Module) else []) if isinstance(m, torch.nn.ModuleList) and len(m)]
    if len(lists) != 1:
        raise TypeError(
            f"{type(model).__name__}: the transformer blocks are found as the one non-empty ModuleList under "
            "`model.base_model` (GPT-2, Llama, GPT-NeoX layouts); this model has "
            f"{len(lists)}. Pass a HF decoder of a supported layout."
        )
    return lists[0]


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm after the last block of a HF decoder: the backbone's one direct child that is a norm with a gain
    (GPT-2 `ln_f`, Llama `norm`, GPT-NeoX `final_layer_norm`)."""
    base = getattr(model, "base_model", None)
    norms = [
        (name, m)
        for name, m in (base.named_children() if isinstance(base, torch.nn.Module) else [])
        if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None
    ]
    if len(norms) != 1:
        raise TypeError(
            f"{type(model).__name__}: expected one final norm among the backbone's children, found "
            f"{[n for n, _ in norms] or 'none'} (GPT-2, Llama and GPT-NeoX layouts are supported)"
        )
    return norms[0][1]


def block_part(block: torch.nn.Module, site: str) -> torch.nn.Module:
    """A block's attention ("attn_out") or MLP ("mlp_out") submodule, whose output is what the block adds to the
    residual stream (GPT-2, Llama and GPT-NeoX names)."""
    from rlhf_lens.analyses.probes.activations import _ATTENTION_NAMES, _MLP_NAMES, _child

    names = {"attn_out": _ATTENTION_NAMES, "mlp_out": _MLP_NAMES}
    if site not in names:
        raise ValueError(f"site must be one of {sorted(names)}, got {site!r}")
    return _child(block, names[site], site, type(block).__name__)


def _check_layer(model: torch.nn.Module, layer: int) -> None:
    blocks = transformer_blocks(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer {layer} is out of range: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")


@contextlib.contextmanager
def _push(model: torch.nn.Module, layer: int, vector: torch.Tensor, position_mask: Callable[[torch.Tensor], torch.Tensor] | None):
    """Add `vector` (d_model,) to block `layer`'s output at the positions `position_mask(hidden) -> (batch, seq)` picks
    (all positions when None), for the duration of the block."""
    _check_layer(model, layer)
    blocks = transformer_blocks(model)

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output  # (batch, seq, d_model)
        where = torch.ones(hidden.shape[:2], device=hidden.device) if position_mask is None else position_mask(hidden)
        pushed = hidden + where[:, :, None].to(hidden.dtype) * vector.to(hidden.dtype)
        return (pushed, *output[1:]) if isinstance(output, tuple) else pushed

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _summary(outcomes: dict[float, np.ndarray]) -> tuple[pd.DataFrame, float, float]:
    """Per scale: mean, sem, paired change against scale 0; and the least-squares slope of the per-text outcome on
    the scale with its z (slopes fitted per text, then averaged: a paired estimate)."""
    base = outcomes[0.0]
    rows = []
    for scale, values in sorted(outcomes.items()):
        diff = values - base
        n = len(values)
        rows.append(
            {
                "scale": scale,
                "mean": float(values.mean()),
                "sem": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
                "change": float(diff.mean()),
                "change_sem": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            }
        )
    scales = np.asarray(sorted(outcomes))
    if len(scales) < 2:
        return pd.DataFrame(rows), math.nan, math.nan
    matrix = np.stack([outcomes[s] for s in scales], axis=1)  # (texts, scales)
    centred = scales - scales.mean()
    per_text = matrix @ centred / (centred @ centred)  # (texts,)
    slope = float(per_text.mean())
    sem = float(per_text.std(ddof=1) / math.sqrt(len(per_text))) if len(per_text) > 1 else math.nan
    z = slope / sem if sem and math.isfinite(sem) and sem > 0 else (math.inf if slope else 0.0)
    return pd.DataFrame(rows), slope, z


def _verdict(meta: dict, expected_sign: int | None) -> Verdict:
    slope, z, moves_z = meta["slope"], meta["z"], meta["moves_z"]
    name = meta.get("concept") or "the direction"
    check = f"steering along {name} after block {meta['layer']} moves the {meta['what']}"
    rule = f"ok when the per-sd change differs from 0 by more than {moves_z:g} standard errors" + (
        " in the expected sign" if expected_sign else ""
    )
    if not math.isfinite(slope):
        return Verdict(check, "warn", "one steering scale only: pass at least two scales to measure an effect", rule, value=math.nan)
    evidence = f"{slope:+.3g} {meta['what']} per sd along {name} (z = {z:.1f}, {meta['texts']} texts)"
    if abs(z) < moves_z:
        return Verdict(check, "warn", evidence + ": the direction can be decoded here but pushing along it moves nothing", rule, value=z)
    if expected_sign and np.sign(slope) != expected_sign:
        return Verdict(check, "warn", evidence + ": it moves, against the expected sign", rule, value=z)
    return Verdict(check, "ok", evidence, rule, value=z)


def _unit(direction) -> torch.Tensor:
    vector = torch.as_tensor(np.asarray(direction, dtype=np.float32))
    norm = float(vector.norm())
    if vector.ndim != 1 or not math.isfinite(norm) or norm == 0:
        raise ValueError(f"direction must be a finite, non-zero vector of shape (d_model,), got shape {tuple(vector.shape)}")
    return vector / norm


def steer_rewards(
    reward_model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    direction,
    *,
    layer: int,
    scales: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    positions: str = "all",
    concept: str = "",
    expected_sign: int | None = None,
    sd: float | None = None,
    moves_z: float = 3.0,
) -> SteeringResult:
    """Rewards of the texts with the residual stream after block `layer` pushed along `direction` by each of `scales`
    standard deviations (of the unsteered residual's projection on the unit direction at those positions).

    positions: "all" tokens, the "completion" tokens, or the "last" token (the one the score head reads).
    expected_sign: +1 or -1 when the concept should raise or lower the reward (the verdict then checks the sign).
    sd: the unit of `scales` in residual-stream norm units, instead of the measured standard deviation.
    moves_z: the verdict's threshold: the per-sd change must differ from 0 by this many standard errors (paired over
    texts) to count as moving.
    Texts are read as `models.score_texts` reads them. Returns a `SteeringResult` with one verdict.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if len(prompts) != len(completions) or not len(prompts):
        raise ValueError(f"pass one completion per prompt, at least one text (got {len(prompts)} and {len(completions)})")
    unit = _unit(direction)
    _check_layer(reward_model, layer)
    parts = models.reward_input_parts(tokenizer, prompts, completions, models.context_length(reward_model))
    ids, mask = models.pad_right([p + c for p, c in parts], tokenizer.pad_token_id)
    device = next(reward_model.parameters()).device
    ids, mask, unit = ids.to(device), mask.to(device), unit.to(device)
    chosen = _position_mask(mask, [len(p) for p, _ in parts], positions)  # (batch, seq)
    was_training = reward_model.training
    reward_model.eval()
    try:
        sd = _projection_sd(reward_model, ids, mask, layer, unit, chosen) if sd is None else float(sd)
        outcomes = {}
        for scale in sorted({0.0, *map(float, scales)}):
            with torch.no_grad(), _push(reward_model, layer, scale * sd * unit, lambda hidden: chosen):
                outcomes[scale] = (
                    models.score_rewards(reward_model, [p + c for p, c in parts], tokenizer.pad_token_id).double().cpu().numpy()
                )
    finally:
        reward_model.train(was_training)
    df, slope, z = _summary(outcomes)
    meta = {
        "what": "reward",
        "concept": concept,
        "layer": layer,
        "positions": positions,
        "sd": sd,
        "texts": len(parts),
        "slope": slope,
        "z": z,
        "moves_z": float(moves_z),
    }
    return SteeringResult(df=df, meta=meta, verdicts=(_verdict(meta, expected_sign),))


def _position_mask(mask: torch.Tensor, prefix_lengths: Sequence[int], positions: str) -> torch.Tensor:
    """(batch, seq) 1 where steering applies: every real token, the completion's, or the last real token."""
    if positions == "all":
        return mask.float()
    seq = torch.arange(mask.shape[1], device=mask.device)[None, :]
    if positions == "last":
        return (seq == (mask.sum(1, keepdim=True) - 1)).float()
    starts = torch.tensor(prefix_lengths, device=mask.device)[:, None]
    return ((seq >= starts) & mask.bool()).float()


@torch.no_grad()
def _projection_sd(model, ids, mask, layer: int, unit: torch.Tensor, chosen: torch.Tensor) -> float:
    """The standard deviation of block `layer`'s output projected on `unit`, over the chosen positions."""
    captured = []
    handle = transformer_blocks(model)[layer].register_forward_hook(
        lambda _m, _i, output: captured.append(output[0] if isinstance(output, tuple) else output)
    )
    try:
        model.base_model(input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask))
    finally:
        handle.remove()
    projection = captured[0] @ unit  # (batch, seq)
    values = projection[chosen.bool()]
    return float(values.std()) if values.numel() > 1 else 1.0


def steer_policy(
    policy: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    direction,
    score: Callable[[Sequence[str], Sequence[str]], np.ndarray],
    *,
    layer: int,
    scales: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    max_new_tokens: int = 32,
    seed: int = 0,
    concept: str = "",
    expected_sign: int | None = None,
    sd: float | None = None,
    moves_z: float = 3.0,
) -> SteeringResult:
    """The policy samples a completion of each prompt with the residual stream after block `layer` pushed along
    `direction` at every position (prompt and generated tokens), by each of `scales` sds; `score(prompts,
    completions) -> (n,)` scores the samples (e.g. the task's gold reward). The same sampling seeds at every scale,
    so the changes are paired; `sd` replaces the measured unit of `scales`; `moves_z` is the verdict's threshold (see
    `steer_rewards`). Returns a `SteeringResult` with one verdict."""
    if not len(prompts):
        raise ValueError("pass at least one prompt")
    _check_layer(policy, layer)
    unit = _unit(direction).to(next(policy.parameters()).device)
    prompt_ids = models.encode_prompts(tokenizer, prompts)
    ids, mask = models.pad_right(prompt_ids, tokenizer.pad_token_id)
    device = next(policy.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    was_training = policy.training
    policy.eval()
    try:
        sd = _projection_sd(policy, ids, mask, layer, unit, mask.float()) if sd is None else float(sd)
        outcomes = {}
        seeds = [seed + i for i in range(len(prompts))]
        for scale in sorted({0.0, *map(float, scales)}):
            with torch.no_grad(), _push(policy, layer, scale * sd * unit, None):
                sampled = models.sample(policy, tokenizer, prompt_ids, seeds, max_new_tokens=max_new_tokens)
            outcomes[scale] = np.asarray(score(list(prompts), list(sampled.texts)), dtype=np.float64)
    finally:
        policy.train(was_training)
    df, slope, z = _summary(outcomes)
    meta = {
        "what": "score",
        "concept": concept,
        "layer": layer,
        "positions": "all",
        "sd": sd,
        "texts": len(prompts),
        "slope": slope,
        "z": z,
        "moves_z": float(moves_z),
    }
    return SteeringResult(df=df, meta=meta, verdicts=(_verdict(meta, expected_sign),))


@dataclass(frozen=True, eq=False)
class ConceptSteeringResult(Result):
    """Several directions steered one after another on the same texts, one row per (concept, scale).

    Columns: concept, and those of `SteeringResult` (scale, mean, sem, change, change_sem).
    `meta`: what, layer, positions, texts, moves_z, concepts ({concept: that run's meta: sd, slope, z}).
    One verdict per concept (see `SteeringResult`).
    """

    columns: ClassVar[tuple[str, ...]] = ("concept", "scale", "mean", "sem", "change", "change_sem")
    heading: ClassVar[str] = "Steering along concept directions"

    @classmethod
    def from_runs(cls, runs: dict[str, SteeringResult], *, meta: dict | None = None) -> ConceptSteeringResult:
        if not runs:
            raise ValueError("no steering runs to combine")
        first = next(iter(runs.values())).meta
        df = pd.concat([r.df.assign(concept=name) for name, r in runs.items()], ignore_index=True)[list(cls.columns)]
        shared = {k: first[k] for k in ("what", "layer", "positions", "texts")} | {"moves_z": first.get("moves_z")}
        per_concept = {name: {k: r.meta[k] for k in ("sd", "slope", "z")} for name, r in runs.items()}
        verdicts = tuple(v for r in runs.values() for v in r.verdicts)
        return cls(df=df, meta={**shared, **(meta or {}), "concepts": per_concept}, verdicts=verdicts)

    def headlines(self) -> list[tuple[str, str]]:
        moved = {name: m for name, m in self.meta.get("concepts", {}).items() if m.get("slope") is not None and math.isfinite(m["slope"])}
        if not moved:
            return []
        label = f"{self.meta.get('what')} change per sd along {' / '.join(moved)} ({self.meta.get('stage')})"
        return [(label, " / ".join(f"{m['slope']:+.3g}" for m in moved.values()))]

    def plot(self, ax=None):
        if ax is None:
            _, ax = views.new_figure(5.5, 3.4)
        for concept, rows in self.df.groupby("concept", sort=False):
            ax.errorbar(rows["scale"], rows["change"], yerr=rows["change_sem"], marker="o", capsize=3, label=str(concept))
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel(f"push along the direction after block {self.meta.get('layer')} (sd of the residual along it)")
        ax.set_ylabel(f"change in {self.meta.get('what')}")
        ax.set_title(f"steering at {self.meta.get('positions')} positions, {self.meta.get('texts')} texts", fontsize=9)
        ax.legend(fontsize=8)
        ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "change of the outcome as the residual stream is pushed along each concept direction")

    def table_html(self) -> Markup:
        caption = "Outcome at each steering scale, per concept (paired change against the unsteered run)"
        return views.details("Every concept and scale", views.table(self.df, max_rows=None, caption=caption))
