"""Two runs side by side (seeds, recipes, algorithms): how their configs differ, and their curves overlaid.

These read two runs (or two runs' results) and are not registered: `rlhf-lens compare` calls them.
"""

from __future__ import annotations

import math

import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.curves import CurvesResult
from rlhf_lens.analyses.provenance import flatten_config
from rlhf_lens.runs import Run

ABSENT = "(absent)"


class ConfigDiffResult(Result):
    """Config keys whose values differ between two runs. Columns: key, a, b (JSON text, or "(absent)").
    `meta["names"]` holds the two run names; `meta["same"]` counts the keys that agree."""

    columns = ("key", "a", "b")
    heading = "Config differences"

    def headlines(self) -> list[tuple[str, str]]:
        return [("config keys that differ", str(len(self.df)))]

    def table_html(self) -> Markup:
        name_a, name_b = self.meta.get("names", ("A", "B"))
        shown = self.df.rename(columns={"a": f"A: {name_a}", "b": f"B: {name_b}"})
        note = views.render('<p class="note">{{ n }} other keys are equal.</p>', n=self.meta.get("same", 0))
        return views.table(shown, max_rows=None) + note


def compare_configs(run_a: Run, run_b: Run) -> ConfigDiffResult:
    """The resolved config keys (flattened, stages by name) whose values differ; the run name is left out."""
    flat_a = {r["key"]: r["value"] for r in flatten_config(run_a.config)}
    flat_b = {r["key"]: r["value"] for r in flatten_config(run_b.config)}
    keys = [k for k in list(flat_a) + [k for k in flat_b if k not in flat_a] if k != "name"]
    rows = [{"key": k, "a": flat_a.get(k, ABSENT), "b": flat_b.get(k, ABSENT)} for k in keys if flat_a.get(k) != flat_b.get(k)]
    meta = {"names": [run_a.name, run_b.name], "same": len(keys) - len(rows)}
    return ConfigDiffResult(df=pd.DataFrame(rows, columns=list(ConfigDiffResult.columns)), meta=meta)


class CurvesOverlayResult(Result):
    """Both runs' curves. Columns: run ("A"/"B"), stage, step, metric, value. `meta["names"]` holds the run names."""

    columns = ("run", "stage", "step", "metric", "value")
    heading = "Training curves overlaid"

    def shared_metrics(self, stage: str) -> list[str]:
        """Metrics both runs logged for `stage`."""
        part = self.df[self.df["stage"] == stage]
        return sorted(set(part.loc[part["run"] == "A", "metric"]) & set(part.loc[part["run"] == "B", "metric"]))

    def plot(self, ax=None, *, stage: str | None = None, metrics: list[str] | None = None):
        """A grid of small plots for one stage (default: the first both runs have), A and B in each; with `ax`,
        the first chosen metric only."""
        stages = [s for s in self.df["stage"].unique() if self.shared_metrics(s)]
        stage = stage or (stages[0] if stages else self.df["stage"].iloc[0])
        metrics = metrics or self.shared_metrics(stage)
        names = self.meta.get("names", ("A", "B"))
        if ax is not None:
            _overlay(ax, self.df, stage, metrics[0], names)
            return ax
        ncols = 4
        figure, axes = views.new_figure(
            ncols * 2.6, max(1, math.ceil(len(metrics) / ncols)) * 1.9, ncols=ncols, nrows=max(1, math.ceil(len(metrics) / ncols))
        )
        for axis, metric in zip(axes.flat, metrics):
            _overlay(axis, self.df, stage, metric, names)
        for axis in list(axes.flat)[len(metrics) :]:
            axis.axis("off")
        axes.flat[0].legend(fontsize=6)
        figure.suptitle(f"stage {stage}", fontsize=9)
        figure.tight_layout()
        return axes

    def figures_html(self) -> Markup:
        parts = Markup("")
        for stage in self.df["stage"].unique():
            if self.shared_metrics(stage):
                axes = self.plot(stage=stage)
                parts += views.figure_html(axes.flat[0].figure, f"curves of stage {stage}, both runs")
        return parts

    def table_html(self) -> Markup:
        last = self.df.sort_values("step").groupby(["stage", "metric", "run"])["value"].last().unstack("run").reset_index()
        return views.table(last, caption="Last logged value of each metric", max_rows=60)


def _overlay(ax, df: pd.DataFrame, stage: str, metric: str, names) -> None:
    for run, name, colour in (("A", names[0], "tab:blue"), ("B", names[1], "tab:orange")):
        part = df[(df["run"] == run) & (df["stage"] == stage) & (df["metric"] == metric)]
        ax.plot(part["step"], part["value"], color=colour, linewidth=1.1, label=f"{run}: {name}")
    ax.set_title(metric, fontsize=8)
    ax.tick_params(labelsize=7)


def overlay_curves(curves_a: CurvesResult, curves_b: CurvesResult, names: tuple[str, str]) -> CurvesOverlayResult:
    """Two runs' training curves (from `analyze_training_curves`) in one table, for overlaid plots."""
    df = pd.concat([curves_a.df.assign(run="A"), curves_b.df.assign(run="B")], ignore_index=True)
    return CurvesOverlayResult(df=df[list(CurvesOverlayResult.columns)], meta={"names": list(names)})
