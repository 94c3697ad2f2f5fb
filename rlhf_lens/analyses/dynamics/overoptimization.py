"""Reward over-optimisation (Gao, Schulman and Hilton, 2023, "Scaling laws for reward model overoptimization").

Gao et al. measure optimisation by the distance d = sqrt(KL(pi || pi_init)) the policy moved, and find the gold
reward gain (over the initial policy) follows, with the proxy reward model's gain rising further:

    reinforcement learning:  R(d) = d (alpha - beta log d)
    best-of-n sampling:      R(d) = d (alpha - beta d),     KL of best-of-n = log n - (n - 1) / n

Both are linear in (alpha, beta), so `gao_fit` solves them by least squares. A gold curve with beta > 0 peaks at
d* = exp(alpha / beta - 1) (RL) or d* = alpha / (2 beta) (best-of-n) and falls after: optimising the proxy further
makes the policy worse by the gold reward. `overoptimization` reads a policy stage's evaluations (the same prompts and
seeds at every evaluation; KL and rewards as the trainer logged them), fits both curves and gives a verdict: flag when
the gold reward measurably fell from its best evaluation while the proxy did not, warn when the fitted gold curve
peaks within the distance covered and the gold reward at the largest distance sits more than one standard error below
its best (the fall is not yet measurable), ok otherwise.

Shape glossary: evaluations (one row per evaluation step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict

__all__ = ["FORMS", "GaoFit", "OverOptimizationResult", "best_of_n_distance", "gao_curve", "gao_fit", "overoptimization"]

Form = Literal["rl", "bon"]
FORMS: tuple[str, ...] = ("rl", "bon")


class GaoFit(NamedTuple):
    """A fitted Gao et al. curve R(d)."""

    form: str
    alpha: float
    beta: float
    r2: float
    """Share of the variance of R the curve explains."""
    peak_d: float
    """Where R(d) is largest (inf when beta <= 0: no peak)."""


def _design(d: np.ndarray, form: str) -> np.ndarray:  # (evaluations,) -> (evaluations, 2)
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)  # d log d -> 0 as d -> 0
        return np.stack([d, -d_log_d], axis=1)
    return np.stack([d, -(d**2)], axis=1)


def gao_curve(d, alpha: float, beta: float, form: Form = "rl") -> np.ndarray:
    """R(d) of the form ("rl" or "bon") with the given parameters."""
    d = np.asarray(d, dtype=float)
    return (_design(d.ravel(), form) @ np.array([alpha, beta])).reshape(d.shape)


def gao_fit(d, reward, form: Form = "rl") -> GaoFit:
    """Least-squares (alpha, beta) of R(d) = d (alpha - beta log d) ("rl") or d (alpha - beta d) ("bon") through the
    points (d_i, R_i); R is the reward gain over the initial policy, so the curve passes through (0, 0)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    d, reward = np.asarray(d, dtype=float), np.asarray(reward, dtype=float)
    if d.shape != reward.shape or d.ndim != 1:
        raise ValueError(f"d and reward must be 1-d of one length, got shapes {d.shape} and {reward.shape}")
    keep = np.isfinite(d) & np.isfinite(reward)
    if np.count_nonzero(d[keep] > 0) < 2:
        raise ValueError("a Gao et al. fit needs at least two evaluations away from the initial policy (d > 0)")
    design = _design(d[keep], form)
    (alpha, beta), *_ = np.linalg.lstsq(design, reward[keep], rcond=None)
    residual = reward[keep] - design @ np.array([alpha, beta])
    total = float(((reward[keep] - reward[keep].mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else math.nan
    if beta <= 0:
        peak = math.inf
    else:
        peak = math.exp(alpha / beta - 1.0) if form == "rl" else alpha / (2.0 * beta)
    return GaoFit(form, float(alpha), float(beta), r2, float(peak))


def best_of_n_distance(n) -> np.ndarray:
    """d = sqrt(KL(best-of-n || pi)) = sqrt(log n - (n - 1) / n), the analytic KL of best-of-n (Stiennon et al., 2020)."""
    n = np.asarray(n, dtype=float)
    return np.sqrt(np.log(n) - (n - 1.0) / n)


def _per_evaluation(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation step: d, and the proxy and gold gains over the first evaluation with paired SEMs."""
    first = samples[samples["step"] == samples["step"].min()].set_index("prompt_id")
    rows = []
    for step, group in samples.groupby("step"):
        group = group.set_index("prompt_id")
        shared = group.index.intersection(first.index)
        row = {"step": int(step), "kl": float(group["seq_kl"].mean()), "n": len(shared)}
        row["d"] = math.sqrt(max(row["kl"], 0.0))
        for name, column in (("proxy", "reward"), ("gold", "gold_reward")):
            change = (group.loc[shared, column] - first.loc[shared, column]).to_numpy(dtype=float)
            row[name] = float(np.mean(change)) if len(change) else math.nan
            row[f"{name}_sem"] = float(np.std(change, ddof=1) / math.sqrt(len(change))) if len(change) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values("step").reset_index(drop=True)


def _fall(samples: pd.DataFrame, column: str) -> tuple[int, float, float]:
    """(best step, fall from it to the last evaluation, its paired SEM) of `column` (reward or gold_reward)."""
    means = samples.groupby("step")[column].mean()
    best, last = int(means.idxmax()), int(means.index.max())
    a = samples[samples["step"] == best].set_index("prompt_id")[column]
    b = samples[samples["step"] == last].set_index("prompt_id")[column]
    shared = a.index.intersection(b.index)
    diff = (a.loc[shared] - b.loc[shared]).to_numpy(dtype=float)
    sem = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return best, float(np.mean(diff)) if len(diff) else math.nan, sem


def overoptimization(samples: pd.DataFrame, *, fall_z: float = 2.0, meta: dict | None = None) -> OverOptimizationResult:
    """Gao et al.'s analysis of a policy stage's evaluations (`Run.eval_rollouts`: step, prompt_id, reward,
    gold_reward, seq_kl), with the verdict on over-optimisation; see the module docstring. The verdict flags when the
    gold reward fell from its best evaluation by more than `fall_z` paired standard errors (and the proxy did not)."""
    missing = [c for c in ("step", "prompt_id", "reward", "gold_reward", "seq_kl") if c not in samples]
    if missing:
        raise ValueError(f"evaluation samples lack columns {missing}; pass Run.eval_rollouts(stage) of a policy stage")
    if samples["gold_reward"].isna().all():
        raise ValueError("the evaluations carry no gold reward (the task has no oracle): over-optimisation is measured against it")
    table = _per_evaluation(samples)
    if len(table) < 3:
        raise ValueError(f"over-optimisation needs at least 3 evaluations (the start and two more), got {len(table)}; lower eval_every")
    fits = {name: gao_fit(table["d"], table[name], "rl") for name in ("proxy", "gold")}
    for name, fit in fits.items():
        table[f"{name}_fit"] = gao_curve(table["d"], fit.alpha, fit.beta, "rl")
    best_step, fall, fall_sem = _fall(samples, "gold_reward")
    _, proxy_fall, proxy_sem = _fall(samples, "reward")
    far = table.loc[table["d"].idxmax()]
    facts = {
        "gold_far_drop": float(table["gold"].max() - far["gold"]),
        "gold_far_sem": float(far["gold_sem"]) if math.isfinite(far["gold_sem"]) else 0.0,
        **{f"{name}_{key}": getattr(fit, key) for name, fit in fits.items() for key in ("alpha", "beta", "r2", "peak_d")},
        "d_max": float(table["d"].max()),
        "gold_best_step": best_step,
        "gold_fall": fall,
        "gold_fall_sem": fall_sem,
        "proxy_fall": proxy_fall,
        "proxy_fall_sem": proxy_sem,
        "evaluations": len(table),
        "fall_z": fall_z,
    }
    return OverOptimizationResult(df=table, meta={**(meta or {}), **facts}, verdicts=(_verdict(facts),))


def _number(meta, key: str) -> float:
    """A figure of `meta` as a float: the cache stores inf and NaN as null (a peak_d of null: no peak, inf)."""
    value = meta.get(key)
    return (math.inf if key.endswith("peak_d") else math.nan) if value is None else float(value)


def _verdict(f: dict) -> Verdict:
    check = "over-optimisation (gold falls while the proxy rises)"
    fall_z = f["fall_z"]
    rule = (
        f"flag when the gold reward fell from its best evaluation to the last by more than {fall_z:g} paired standard errors "
        "while the proxy did not fall; warn when the fitted gold curve peaks within the distance covered and the gold "
        "reward at the largest distance is more than one standard error below its best"
    )
    z = f["gold_fall"] / f["gold_fall_sem"] if f["gold_fall_sem"] and f["gold_fall_sem"] > 0 else 0.0
    proxy_kept = not (f["proxy_fall_sem"] and f["proxy_fall"] > fall_z * f["proxy_fall_sem"])
    evidence = (
        f"gold best at step {f['gold_best_step']}, then {0.0 - f['gold_fall']:+.3g} to the last evaluation (z = {0.0 - z:.1f}); "
        f"fitted gold peak at d = {f['gold_peak_d']:.3g} (covered up to d = {f['d_max']:.3g}; alpha {f['gold_alpha']:.3g}, "
        f"beta {f['gold_beta']:.3g})"
    )
    if z > fall_z and proxy_kept:
        return Verdict(check, "flag", evidence + ": the gold reward turned down while the proxy held", rule, value=z)
    if math.isfinite(f["gold_peak_d"]) and f["gold_peak_d"] < f["d_max"] and f["gold_far_drop"] > f["gold_far_sem"]:
        return Verdict(check, "warn", evidence + ": the fit peaks within the run, the fall is not yet measurable", rule, value=z)
    return Verdict(check, "ok", evidence, rule, value=z)


@dataclass(frozen=True, eq=False)
class OverOptimizationResult(Result):
    """Proxy and gold reward gain against d = sqrt(KL) per evaluation, with Gao et al.'s fits; one row per evaluation.

    Columns: step, kl (mean sequence KL to the reference), d, n (prompts paired with the first evaluation), proxy and
    gold (mean gain over the first evaluation), proxy_sem and gold_sem (paired), proxy_fit and gold_fit (the RL
    form's fitted values). `meta`: {proxy,gold}_{alpha,beta,r2,peak_d}, d_max, gold_best_step, gold_fall (best minus
    last), gold_fall_sem, proxy_fall, proxy_fall_sem, gold_far_drop (best gold minus the gold at the largest d) and
    gold_far_sem, evaluations, fall_z (the verdict's threshold), stage. One verdict.
    """

    columns: ClassVar[tuple[str, ...]] = ("step", "kl", "d", "proxy", "gold", "proxy_fit", "gold_fit")
    heading: ClassVar[str] = "Over-optimisation (Gao et al., 2023)"

    def headlines(self) -> list[tuple[str, str]]:
        alpha, beta, peak = (_number(self.meta, f"gold_{key}") for key in ("alpha", "beta", "peak_d"))
        return [(f"gold reward fit d(α − β log d) ({self.meta.get('stage')}): α, β, peak d", f"{alpha:.3g}, {beta:.3g}, {peak:.3g}")]

    def plot(self, ax=None):
        if ax is None:
            _, ax = views.new_figure(6.0, 3.6)
        grid = np.linspace(0.0, max(float(self.df["d"].max()) * 1.15, 1e-6), 100)
        for name, colour in (("proxy", "tab:orange"), ("gold", "tab:green")):
            ax.errorbar(
                self.df["d"], self.df[name], yerr=self.df[f"{name}_sem"], fmt="o", color=colour, capsize=3, label=f"{name} (measured)"
            )
            alpha, beta = _number(self.meta, f"{name}_alpha"), _number(self.meta, f"{name}_beta")
            if math.isfinite(alpha) and math.isfinite(beta):
                ax.plot(grid, gao_curve(grid, alpha, beta, "rl"), color=colour, linestyle="--", label=f"{name}: d(α − β log d)")
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel("d = sqrt(KL(π || π_init))")
        ax.set_ylabel("reward gain over the start")
        ax.legend(fontsize=8)
        ax.figure.tight_layout()
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, "proxy and gold reward gain against sqrt(KL), with Gao et al.'s fitted curves")
