"""What alignment changed in the policy's behaviour, from its evaluation samples: the distributions of gold reward,
proxy reward and length before and after, and the tokens whose log-probability the policy raised or lowered most
against its reference (the per-token log-ratio log pi - log pi_ref the trainer logged, averaged over each token's
occurrences in the final completions).

Shape glossary: samples (evaluation rows), tokens (distinct token ids in the final completions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.result import Result

__all__ = ["BehaviourDiffResult", "DISTRIBUTIONS", "behaviour_diff", "token_shifts"]

DISTRIBUTIONS = {"gold": "gold_reward", "proxy": "reward", "length": "length"}
"""The distributions compared: name -> evaluation column."""


def token_shifts(completion_ids, log_ratios, min_count: int = 5) -> pd.DataFrame:
    """Per token id: count, mean and SEM of log pi - log pi_ref over its occurrences (lists of per-token arrays, one
    per completion). Tokens seen fewer than `min_count` times are left out. Sorted by the mean, highest first."""
    ids = np.concatenate([np.asarray(c, dtype=np.int64) for c in completion_ids] or [np.zeros(0, np.int64)])
    ratios = np.concatenate([np.asarray(r, dtype=float) for r in log_ratios] or [np.zeros(0)])
    if ids.shape != ratios.shape:
        raise ValueError(f"completion_ids and log_ratios hold {ids.size} and {ratios.size} tokens; they must pair up")
    frame = pd.DataFrame({"token_id": ids, "log_ratio": ratios})
    stats = frame.groupby("token_id")["log_ratio"].agg(["count", "mean", "std"]).reset_index()
    stats = stats[stats["count"] >= min_count]
    stats["sem"] = stats["std"].fillna(0.0) / np.sqrt(stats["count"])
    return stats.drop(columns="std").sort_values("mean", ascending=False).reset_index(drop=True)


def behaviour_diff(
    samples: pd.DataFrame, tokenizer, *, min_count: int = 5, shown: int = 12, meta: dict | None = None
) -> BehaviourDiffResult:
    """The first (starting policy) and last evaluation of a policy stage (`Run.eval_rollouts`) compared: reward and
    length distributions, and the `shown` tokens each way whose mean log-ratio to the reference moved most, among the
    tokens seen at least `min_count` times in the final completions (a mean over fewer is noise)."""
    missing = [c for c in ("step", "completion_ids", "kl_per_token", "length") if c not in samples]
    if missing:
        raise ValueError(f"evaluation samples lack columns {missing}; pass Run.eval_rollouts(stage) of a policy stage")
    start_step, final_step = int(samples["step"].min()), int(samples["step"].max())
    if start_step == final_step:
        raise ValueError(f"the stage has one evaluation (step {start_step}); comparing behaviour needs the start and a later one")
    start, final = samples[samples["step"] == start_step], samples[samples["step"] == final_step]
    shifts = token_shifts(final["completion_ids"], final["kl_per_token"], min_count)
    moved = pd.concat([shifts.head(shown).assign(direction="rose"), shifts.tail(shown).iloc[::-1].assign(direction="fell")])
    moved = moved.drop_duplicates("token_id")
    moved.insert(0, "token", [tokenizer.decode([int(t)]) for t in moved["token_id"]])
    distributions = {
        f"{name}_{side}": [float(v) for v in part[column].dropna()]
        for name, column in DISTRIBUTIONS.items()
        if column in samples and samples[column].notna().any()
        for side, part in (("start", start), ("final", final))
    }
    facts = {
        "start_step": start_step,
        "final_step": final_step,
        "tokens_ranked": len(shifts),
        "min_count": min_count,
        "shown": shown,
        "distributions": distributions,
    }
    return BehaviourDiffResult(df=moved.reset_index(drop=True), meta={**(meta or {}), **facts})


@dataclass(frozen=True, eq=False)
class BehaviourDiffResult(Result):
    """Tokens whose log-probability the final policy raised or lowered most against its reference. Columns: token
    (decoded), token_id, count (occurrences in the final evaluation completions), mean and sem (of log pi - log pi_ref,
    nats), direction ("rose" or "fell"). `meta`: stage, start_step, final_step, tokens_ranked, min_count (occurrences
    a token needs to be ranked), shown (tokens listed each way), distributions ({gold,proxy,length}_{start,final}: the
    evaluation values)."""

    columns: ClassVar[tuple[str, ...]] = ("token", "token_id", "count", "mean", "sem", "direction")
    heading: ClassVar[str] = "Behaviour before and after alignment"

    def headlines(self) -> list[tuple[str, str]]:
        out = []
        for direction in ("rose", "fell"):
            part = self.df[self.df["direction"] == direction]
            if len(part):
                top = part.iloc[0]
                out.append(
                    (f"token {direction} most ({self.meta.get('stage')})", f"{top['token']!r} {top['mean']:+.2f} nats (n = {top['count']})")
                )
        return out

    def plot(self, ax=None):
        """Start and final distributions of gold, proxy and length (one panel each), then the token shifts."""
        dists = self.meta.get("distributions", {})
        names = [n for n in DISTRIBUTIONS if f"{n}_start" in dists]
        figure, axes = views.new_figure(2.6 * (len(names) + 2), 2.8, ncols=len(names) + 1)
        axes = np.atleast_1d(axes).ravel()
        for ax_, name in zip(axes, names):
            start, final = np.asarray(dists[f"{name}_start"]), np.asarray(dists[f"{name}_final"])
            bins = np.histogram_bin_edges(np.concatenate([start, final]), bins=15)
            ax_.hist(start, bins=bins, alpha=0.55, label=f"start (step {self.meta.get('start_step')})", color="tab:grey")
            ax_.hist(final, bins=bins, alpha=0.55, label=f"final (step {self.meta.get('final_step')})", color="tab:green")
            ax_.set_title(f"{name}: {np.mean(start):.3g} → {np.mean(final):.3g}", fontsize=8)
            ax_.tick_params(labelsize=7)
        axes[0].legend(fontsize=6)
        bars = axes[-1]
        shown = self.df.sort_values("mean")
        y = np.arange(len(shown))
        bars.barh(y, shown["mean"], xerr=shown["sem"], color=["tab:red" if m > 0 else "tab:blue" for m in shown["mean"]])
        bars.set_yticks(y, [repr(t) for t in shown["token"]], fontsize=6)
        bars.axvline(0, color="grey", linewidth=0.6)
        bars.set_xlabel("mean log π − log π_ref (nats)", fontsize=7)
        bars.set_title("tokens that moved most", fontsize=8)
        figure.tight_layout()
        return axes

    def figures_html(self) -> Markup:
        axes = self.plot()
        return views.figure_html(
            axes.flat[0].figure, "gold, proxy and length distributions at the start and the end; tokens whose log-ratio moved most"
        )

    def table_html(self) -> Markup:
        caption = (
            f"Tokens seen at least {self.meta.get('min_count')} times in the final evaluation completions "
            f"({self.meta.get('tokens_ranked')} ranked)"
        )
        return views.table(self.df, caption=caption, max_rows=None)
