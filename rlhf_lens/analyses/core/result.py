"""Result: the one shape every analysis returns (DESIGN.md, "Analyses: one shape for all").

A Result is a frozen dataclass holding a tidy DataFrame (`.df`), small JSON-able facts
(`.meta`: parameters, headline figures) and the verdicts of any checks. It draws itself
(`.plot(ax=None)`, matplotlib imported lazily), renders itself for a report
(`.to_html()`, through `rlhf_lens.views`, so everything is escaped) and shows itself in
Jupyter (`_repr_html_`). Subclasses document their columns and override what they draw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.verdict import Verdict

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True, eq=False)
class Result:
    """Base of every analysis result. Columns of `.df`: see each subclass."""

    df: pd.DataFrame
    """One row per observation, named columns (the subclass docstring lists them)."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """JSON-able facts beside the table: the parameters used, the stage, headline figures."""
    verdicts: tuple[Verdict, ...] = ()
    """Judgements of the checks this analysis makes (empty when it only describes)."""

    columns: ClassVar[tuple[str, ...]] = ()
    """The columns `.df` must have (more are allowed)."""
    heading: ClassVar[str] = "Result"
    """What the table is, for titles ("Data files", "Reward model over checkpoints")."""

    def __post_init__(self) -> None:
        missing = [c for c in self.columns if c not in self.df.columns]
        if missing:
            raise ValueError(f"{type(self).__name__}.df lacks columns {missing}; it has {list(self.df.columns)}")

    # ------------------------------------------------------------------ what subclasses override

    @property
    def title(self) -> str:
        """The heading, with the stage it is about when there is one: "Reward model over checkpoints (stage reward)"."""
        stage = self.meta.get("stage")
        return f"{self.heading} (stage {stage})" if stage else self.heading

    def headlines(self) -> list[tuple[str, str]]:
        """(label, formatted value) pairs for a report's summary; none by default."""
        return []

    def plot(self, ax=None):
        """Draw the result on `ax` (a new figure when None) and return the axes; a table by default."""
        if ax is None:
            _, ax = views.new_figure()
        ax.axis("off")
        shown = self.df.head(15)
        cells = [[views.format_value(v) for v in row] for row in shown.itertuples(index=False, name=None)]
        if cells:
            ax.table(cellText=cells, colLabels=[str(c) for c in shown.columns], loc="center")
        return ax

    def figures_html(self) -> Markup:
        """The figures a report shows for this result (none by default: the table says it all)."""
        return Markup("")

    def table_html(self) -> Markup:
        """The table a report shows (the whole `.df` by default)."""
        return views.table(self.df)

    # ------------------------------------------------------------------ shared behaviour

    def to_html(self) -> Markup:
        """Verdicts, figures and table as an HTML fragment (escaped through `rlhf_lens.views`)."""
        return views.verdict_list(self.verdicts) + self.figures_html() + self.table_html()

    def _repr_html_(self) -> str:
        heading = views.render("<h3>{{ title }}</h3>", title=self.title)
        return str(views.with_stylesheet(heading + self.to_html()))

    def __repr__(self) -> str:
        levels = ", ".join(f"{v.check}: {v.level}" for v in self.verdicts)
        return f"{type(self).__name__}({self.title!r}, {len(self.df)} rows{'; ' + levels if levels else ''})"

    def cache_meta(self) -> dict[str, Any]:
        """`meta` and the verdicts as one JSON-able dict (what the analysis cache stores beside `.df`)."""
        return {"meta": dict(self.meta), "verdicts": [v.to_json() for v in self.verdicts]}

    @classmethod
    def from_cache(cls, df: pd.DataFrame, cached: Mapping[str, Any]) -> Result:
        """The result `cache_meta` and `.df` were saved from."""
        return cls(df=df, meta=dict(cached["meta"]), verdicts=tuple(Verdict.from_json(v) for v in cached["verdicts"]))
