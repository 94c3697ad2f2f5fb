"""Training curves: every stage's logged metrics (DESIGN.md keys) as one tidy table and a grid of small plots."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict
from rlhf_lens.runs import ALL_METRIC_KEYS, Run

register_section(
    "curves",
    "Training curves",
    order=30,
    intro="Every stage's logged metrics over its optimizer steps (TRL's key names where TRL logs the same quantity), "
    "and the events the trainer recorded: skipped steps, KL warnings, resumes.",
)

_EVENT_WORDS = {
    "nan_skip": "skipped step (non-finite loss or reward)",
    "nonfinite_metric": "NaN or infinite logged metric (a diverged run)",
    "kl_warning": "KL warning",
}
"""What the trainer's warning events mean, for the verdict's rule."""


class CurvesResult(Result):
    """Logged metrics. Columns: stage, step, metric, value (one row per logged value; NaN rows dropped).
    `meta["events"]` lists the trainer's event records (event, stage, step, what)."""

    columns = ("stage", "step", "metric", "value")
    heading = "Training curves"

    def metrics_of(self, stage: str, *, min_points: int = 1) -> list[str]:
        """The metrics logged for `stage` (at least `min_points` times), in DESIGN.md's order where it has one."""
        counts = self.df.loc[self.df["stage"] == stage, "metric"].value_counts()
        return sorted(counts.index[counts >= min_points], key=_metric_order)

    def plot(self, ax=None, *, stage: str | None = None, metrics: list[str] | None = None):
        """With `ax`: the chosen metrics (default: all) of one stage (default: the first) overlaid on it.
        Without: a grid of small plots, one per metric of that stage logged more than once; returns the axes."""
        stage = stage or self.df["stage"].iloc[0]
        metrics = metrics or self.metrics_of(stage, min_points=2) or self.metrics_of(stage)
        if ax is not None:
            for metric in metrics:
                part = self.df[(self.df["stage"] == stage) & (self.df["metric"] == metric)]
                ax.plot(part["step"], part["value"], label=metric)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
            return ax
        return _grid(self.df[self.df["stage"] == stage], metrics, title=f"stage {stage}")

    def figures_html(self) -> Markup:
        parts = Markup("")
        for stage in self.df["stage"].unique():
            axes = self.plot(stage=stage)
            parts += views.render("<h4>{{ stage }}</h4>", stage=stage) + views.figure_html(
                axes.flat[0].figure, f"training curves of stage {stage}"
            )
        return parts

    def table_html(self) -> Markup:
        events = pd.DataFrame(self.meta.get("events", []), columns=["event", "stage", "step", "what"])
        summary = self.df.groupby(["stage", "metric"], sort=False)["value"].agg(["count", "first", "last", "min", "max"]).reset_index()
        table = views.details(
            f"Every metric: number of logged values, first, last, smallest and largest ({len(summary)} rows)",
            views.table(summary, max_rows=None),
        )
        if len(events):
            table += views.table(events, caption="Trainer events")
        return table


def _metric_order(metric: str) -> tuple[int, str]:
    order = [k for keys in _DESIGN_ORDER for k in keys]
    return (order.index(metric) if metric in order else len(order), metric)


_DESIGN_ORDER = (
    ("loss", "eval/loss", "eval/perplexity"),
    ("rm/accuracy", "rm/accuracy_gold", "rm/spearman_gold", "rm/margin_mean", "rm/length_corr"),
    ("objective/scores", "reward", "objective/rlhf_reward", "objective/kl", "kl", "eval/gold_mean", "eval/score_mean", "eval/kl"),
)


def _grid(df: pd.DataFrame, metrics: list[str], *, title: str, ncols: int = 4):
    nrows = max(1, math.ceil(len(metrics) / ncols))
    figure, axes = views.new_figure(ncols * 2.6, nrows * 1.9, ncols=ncols, nrows=nrows)
    for ax, metric in zip(axes.flat, metrics):
        part = df[df["metric"] == metric]
        ax.plot(part["step"], part["value"], marker="." if len(part) < 30 else None, linewidth=1.2)
        ax.set_title(metric, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return axes


@analysis("curves.training", result=CurvesResult, section="curves", needs=Needs(metrics=True), order=1)
def analyze_training_curves(
    run: Run,
    *,
    extra_keys: tuple[str, ...] = ("grad_norm", "learning_rate", "rm/ece", "rm/labeler_agreement", "rm/label_accuracy_gold"),
    warning_events: tuple[str, ...] = ("nan_skip", "nonfinite_metric", "kl_warning"),
) -> CurvesResult:
    """Every stage's metrics (the DESIGN.md keys, plus gradient norm and learning rate) as (stage, step, metric, value).

    Settings:
    extra_keys: logged keys outside DESIGN.md's table that are still worth a curve.
    warning_events: trainer events that make the "training events" verdict warn.
    """
    metrics = run.metrics()
    keys = [c for c in metrics.columns if c in ALL_METRIC_KEYS or c in extra_keys]
    tidy = metrics.melt(id_vars=["stage", "step"], value_vars=keys, var_name="metric", value_name="value").dropna(subset=["value"])
    tidy = tidy.astype({"step": int, "value": float}).reset_index(drop=True)
    events = _events(run)
    return CurvesResult(df=tidy, meta={"events": events}, verdicts=(_events_verdict(events, warning_events),))


def _events(run: Run) -> list[dict]:
    events = run.events()
    out = []
    for record in events.to_dict("records"):
        what = record.get("what") or ", ".join(
            f"{k}={v}" for k, v in record.items() if k not in ("event", "time", "stage", "step") and _present(v)
        )
        out.append({"event": record["event"], "stage": _text(record.get("stage")), "step": _int(record.get("step")), "what": _text(what)})
    return out


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _text(value) -> str:
    return str(value) if _present(value) else ""


def _int(value) -> int | None:
    return int(value) if _present(value) else None


def _events_verdict(events: list[dict], warning_events: Sequence[str]) -> Verdict:
    warnings = [e for e in events if e["event"] in warning_events]
    counts = {name: sum(e["event"] == name for e in warnings) for name in warning_events}
    meanings = [_EVENT_WORDS.get(name, f"{name} event") for name in warning_events]
    if len(meanings) > 1:
        rule = f"warn on any {', any '.join(meanings[:-1])}, or {meanings[-1]}"
    else:
        rule = f"warn on any {meanings[0]}" if meanings else "never warn (no event is a warning)"
    return Verdict(
        "training events",
        "warn" if warnings else "ok",
        ", ".join(f"{n} {name} event(s)" for name, n in counts.items()),
        rule,
        value=float(len(warnings)),
    )
