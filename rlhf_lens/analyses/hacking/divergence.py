"""Proxy against gold over a policy's evaluations: does the reward the policy optimises keep climbing after the gold
reward has turned down (reward-model over-optimisation, Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization")?

Both rewards are put on one scale, their change from the first evaluation in units of that evaluation's standard
deviation, so their gap is the divergence; Gao et al. draw them against sqrt(KL) to the starting policy, which this
result does too when the samples carry `seq_kl`. Pure function of rollout DataFrames, tested on planted data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict

__all__ = ["ProxyGoldDivergenceResult", "divergence_verdict", "proxy_gold_divergence"]

COLUMNS = {"proxy": "reward", "gold": "gold_reward", "kl": "seq_kl"}
"""Our metric name -> the rollout column it is the mean of."""


class ProxyGoldDivergenceResult(Result):
    """Proxy and gold reward (and KL to the reference) at every evaluation. Columns: step, metric ("proxy", "gold",
    "kl"; a metric the samples lack is left out), mean, sem (sample std with ddof=1 over sqrt(n)), n, change_sd (the
    change of the mean from the first evaluation in units of the first evaluation's sample std; NaN for kl).
    `meta`: stage, steps, peak_step (the evaluation with the highest mean gold), final_step, gold_fall and
    gold_fall_sem (gold at the peak minus gold at the final step, paired over the prompts both evaluated), z_gold_fall,
    proxy_rise and proxy_rise_sem (proxy at the final step minus at the peak, paired), z_proxy_rise, paired (whether
    samples were paired by prompt), final_gap_sd (proxy minus gold change_sd at the final step), z_significant (the
    verdict's threshold)."""

    columns = ("step", "metric", "mean", "sem", "n", "change_sd")
    heading = "Proxy against gold reward"

    def number(self, key: str) -> float:
        """A figure of `meta` as a float (NaN when missing; the cache stores NaN as null)."""
        value = self.meta.get(key)
        return math.nan if value is None else float(value)

    def metrics(self) -> list[str]:
        return [m for m in COLUMNS if m in set(self.df["metric"])]

    def gap(self) -> pd.DataFrame:
        """Per step: step, proxy_sd, gold_sd (change_sd of each) and gap (proxy_sd - gold_sd): how far the proxy ran
        ahead of the gold, in starting standard deviations."""
        wide = self.df[self.df["metric"].isin(["proxy", "gold"])].pivot(index="step", columns="metric", values="change_sd")
        out = pd.DataFrame({"step": wide.index.astype(int)})
        out["proxy_sd"] = wide["proxy"].to_numpy() if "proxy" in wide else np.nan
        out["gold_sd"] = wide["gold"].to_numpy() if "gold" in wide else np.nan
        out["gap"] = out["proxy_sd"] - out["gold_sd"]
        return out

    def headlines(self) -> list[tuple[str, str]]:
        return [("proxy − gold, final (starting SDs)", views.format_value(self.number("final_gap_sd")))]

    def plot(self, ax=None):
        """With `ax`: the standardised change of proxy and gold over steps, SEM bands. Without: that, and the same
        against sqrt(mean KL to the reference) when the samples carry it (Gao et al.'s axis); returns the axes."""
        if ax is not None:
            self._draw(ax, "step")
            return ax
        panels = ["step"] + (["sqrt_kl"] if "kl" in self.metrics() else [])
        figure, axes = views.new_figure(3.6 * len(panels), 2.8, ncols=len(panels))
        axes = np.atleast_1d(axes)
        for ax_, x in zip(axes.flat, panels):
            self._draw(ax_, x)
        figure.suptitle(f"{self.title}: change from the first evaluation (± SEM)", fontsize=9)
        figure.tight_layout()
        return axes

    def _draw(self, ax, x: str) -> None:
        kl = self.df[self.df["metric"] == "kl"].set_index("step")["mean"]
        for metric in [m for m in ("proxy", "gold") if m in self.metrics()]:
            part = self.df[self.df["metric"] == metric].sort_values("step")
            first = part.iloc[0]
            sd = first["sem"] * math.sqrt(first["n"]) if first["n"] > 1 else math.nan
            sem = np.nan_to_num(part["sem"].to_numpy(float) / sd) if sd and math.isfinite(sd) else np.zeros(len(part))
            xs = part["step"].to_numpy() if x == "step" else np.sqrt(np.clip(kl.reindex(part["step"]).to_numpy(float), 0, None))
            (line,) = ax.plot(xs, part["change_sd"], marker="o", markersize=3, label=metric)
            ax.fill_between(xs, part["change_sd"] - sem, part["change_sd"] + sem, color=line.get_color(), alpha=0.2, linewidth=0)
        peak = self.meta.get("peak_step")
        if x == "step" and peak is not None:
            ax.axvline(peak, color="grey", linestyle=":", linewidth=0.8, label=f"gold peak (step {peak})")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xlabel("step" if x == "step" else "sqrt(KL to reference), nats^½", fontsize=7)
        ax.set_ylabel("change (starting SDs)", fontsize=7)
        ax.tick_params(labelsize=6)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)

    def figures_html(self) -> Markup:
        axes = self.plot()
        return views.figure_html(
            axes.flat[0].figure,
            f"proxy and gold reward of stage {self.meta.get('stage')} over evaluations, as changes from the first in its standard deviations",
        )

    def table_html(self) -> Markup:
        wide = self.df.pivot(index="step", columns="metric", values=["mean", "sem"])
        rows = pd.DataFrame({"step": wide.index})
        for metric in self.metrics():
            rows[metric] = [f"{m:.3g} ± {s:.2g}" for m, s in zip(wide[("mean", metric)], wide[("sem", metric)])]
        gap = self.gap().set_index("step")["gap"]
        rows["proxy − gold (starting SDs)"] = gap.reindex(rows["step"]).to_numpy()
        return views.table(rows, max_rows=None, caption="Mean ± SEM at each evaluation; the gap of the standardised changes")


# --------------------------------------------------------------------------- the function


def proxy_gold_divergence(
    samples: pd.DataFrame, *, z_significant: float = 2.0, meta: dict[str, Any] | None = None
) -> ProxyGoldDivergenceResult:
    """Mean and SEM of the proxy (`reward`), gold (`gold_reward`) and KL (`seq_kl`) at every `step` of evaluation
    rollouts, and whether the gold reward fell significantly from its peak while the proxy kept rising.

    Samples are paired across steps by `key` when there is one, else by `prompt_id` and its occurrence within the
    step (evaluations sample the same prompts with the same seeds); without `prompt_id` the changes are compared
    unpaired (Welch). The verdict counts a fall or a rise with a z of at least `z_significant`. `meta` adds facts
    (e.g. the stage).
    """
    if "step" not in samples.columns or samples.empty:
        raise ValueError("proxy_gold_divergence needs rollout rows with a `step` column (Run.eval_rollouts); got none")
    frame = _frame(samples)
    steps = sorted(int(s) for s in frame["step"].unique())
    rows = []
    for metric in [m for m in COLUMNS if frame[m].notna().any()]:
        first = frame.loc[frame["step"] == steps[0], metric].to_numpy(float)
        first = first[np.isfinite(first)]
        sd0 = float(first.std(ddof=1)) if len(first) >= 2 else math.nan
        mean0 = float(first.mean()) if len(first) else math.nan
        for step in steps:
            stats = _stats(frame.loc[frame["step"] == step, metric])
            change = (stats["mean"] - mean0) / sd0 if metric != "kl" and sd0 > 0 else math.nan
            rows.append({"step": step, "metric": metric, **stats, "change_sd": change})
    df = pd.DataFrame(rows, columns=list(ProxyGoldDivergenceResult.columns)).astype({"step": int, "n": int})
    facts = {**(meta or {}), "steps": steps, "final_step": steps[-1], **_peak(frame, steps), "z_significant": z_significant}
    result = ProxyGoldDivergenceResult(df=df, meta=facts)
    gap = result.gap()
    facts["final_gap_sd"] = float(gap["gap"].iloc[-1]) if len(gap) else math.nan
    result = ProxyGoldDivergenceResult(df=df, meta=facts)
    return ProxyGoldDivergenceResult(df=df, meta=facts, verdicts=(divergence_verdict(result),))


def _frame(samples: pd.DataFrame) -> pd.DataFrame:
    order = ["step", "sample_id"] if "sample_id" in samples.columns else ["step"]
    raw = samples.sort_values(order, kind="stable").reset_index(drop=True)
    out = pd.DataFrame({"step": raw["step"].astype(int)})
    if "key" in raw.columns:
        out["key"] = raw["key"].astype(str)
    elif "prompt_id" in raw.columns:
        prompt = raw["prompt_id"].astype(str)
        out["key"] = prompt + "#" + prompt.groupby(raw["step"]).cumcount().astype(str)
    else:
        out["key"] = None
    for metric, column in COLUMNS.items():
        values = raw[column] if column in raw.columns else pd.Series(np.nan, index=raw.index)
        out[metric] = pd.to_numeric(values, errors="coerce").astype(float)
    return out


def _stats(values) -> dict:
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return {
        "mean": float(x.mean()) if len(x) else math.nan,
        "sem": float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) >= 2 else math.nan,
        "n": len(x),
    }


def _difference(frame: pd.DataFrame, metric: str, step_from: int, step_to: int) -> tuple[float, float, bool]:
    """mean(metric at step_to) - mean(at step_from) and its SEM: paired over the keys both steps have (at least two),
    else Welch's unpaired SEM. The third value says whether it was paired."""
    a = frame[frame["step"] == step_from].dropna(subset=[metric])
    b = frame[frame["step"] == step_to].dropna(subset=[metric])
    if a["key"].notna().all() and b["key"].notna().all():
        x, y = a.set_index("key")[metric], b.set_index("key")[metric]
        keys = x.index.intersection(y.index, sort=False)
        if len(keys) >= 2:
            stats = _stats(y.loc[keys].to_numpy(float) - x.loc[keys].to_numpy(float))
            return stats["mean"], stats["sem"], True
    x, y = a[metric].to_numpy(float), b[metric].to_numpy(float)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan, False
    return float(y.mean() - x.mean()), float(math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))), False


def _peak(frame: pd.DataFrame, steps: list[int]) -> dict[str, Any]:
    """The gold peak and the paired fall from it to the final step, with the proxy's change over the same steps."""
    nan = {"peak_step": None, "gold_fall": math.nan, "gold_fall_sem": math.nan, "z_gold_fall": math.nan}
    nan |= {"proxy_rise": math.nan, "proxy_rise_sem": math.nan, "z_proxy_rise": math.nan, "paired": False}
    if not frame["gold"].notna().any():
        return nan
    means = frame.groupby("step")["gold"].mean()
    peak = int(max(steps, key=lambda s: (means.get(s, -math.inf), -s)))  # the earliest of equal peaks
    final = steps[-1]
    rise, rise_sem, paired = _difference(frame, "gold", peak, final)
    proxy_rise, proxy_sem, _ = _difference(frame, "proxy", peak, final) if frame["proxy"].notna().any() else (math.nan, math.nan, False)
    return {
        "peak_step": peak,
        "gold_fall": 0.0 - rise,
        "gold_fall_sem": rise_sem,
        "z_gold_fall": _z(-rise, rise_sem),
        "proxy_rise": proxy_rise,
        "proxy_rise_sem": proxy_sem,
        "z_proxy_rise": _z(proxy_rise, proxy_sem),
        "paired": paired,
    }


def _z(mean: float, sem: float) -> float:
    """mean / sem; ±inf for a nonzero change with no spread, 0 for none at all, NaN when unknown."""
    if math.isnan(mean) or math.isnan(sem):
        return math.nan
    if sem == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / sem


# --------------------------------------------------------------------------- the verdict


def divergence_verdict(result: ProxyGoldDivergenceResult) -> Verdict:
    """Flag when the gold reward at the final step is significantly below its peak while the proxy rose over the
    same steps (Gao et al. 2022); warn on a significant gold fall alone, or when the check cannot be made.
    Significant: a z of at least the result's `meta["z_significant"]`."""
    number = result.number
    z_significant = float(result.meta["z_significant"])
    threshold = (
        f"flag when the gold reward at the final evaluation is below its peak by a paired z ≥ {z_significant:g} while the "
        f"proxy rose over the same steps (z ≥ {z_significant:g}): the proxy is over-optimised (Gao et al. 2022); warn on "
        "the gold fall alone; the peak is picked after looking, so the fall is a little easier to reach than at a step "
        "fixed in advance"
    )
    check = "proxy-gold divergence"
    steps = result.meta.get("steps") or []
    if "gold" not in result.metrics() or "proxy" not in result.metrics():
        missing = "gold" if "gold" not in result.metrics() else "proxy"
        return Verdict(check, "warn", f"no {missing} reward in the samples: nothing to compare", threshold)
    if len(steps) < 2:
        return Verdict(check, "warn", f"a single evaluation (step {steps[0] if steps else '?'}): no trend to judge", threshold)
    peak, final = result.meta["peak_step"], result.meta["final_step"]
    gap = f"proxy − gold at the final step: {number('final_gap_sd'):+.2f} starting SDs"
    if peak == final:
        return Verdict(check, "ok", f"gold is highest at the final evaluation (step {final}); {gap}", threshold, value=0.0)
    z_fall, z_rise = number("z_gold_fall"), number("z_proxy_rise")
    pairing = "paired over the same prompts" if result.meta.get("paired") else "unpaired"
    evidence = (
        f"gold peaked at step {peak}; step {peak} → {final}: gold {-number('gold_fall'):+.3g} ± {number('gold_fall_sem'):.2g} "
        f"(z of the fall = {z_fall:.1f}), proxy {number('proxy_rise'):+.3g} ± {number('proxy_rise_sem'):.2g} (z = {z_rise:.1f}), "
        f"{pairing}; {gap}"
    )
    if z_fall >= z_significant:  # NaN compares False: a fall that cannot be measured is not one
        if z_rise >= z_significant:
            return Verdict(check, "flag", f"{evidence}: the proxy kept rising while the gold fell", threshold, value=z_fall)
        return Verdict(check, "warn", f"{evidence}: the gold fell, the proxy did not rise significantly", threshold, value=z_fall)
    return Verdict(check, "ok", evidence, threshold, value=z_fall)
