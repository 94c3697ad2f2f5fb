"""The comparison page of two runs (seeds, recipes or algorithms): config differences, each analysis side by
side, verdicts side by side, curves overlaid. Built from results it is given; imports no analysis module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rlhf_lens import views
from rlhf_lens.report.page import Entry, Section, render_page, trained_sentence
from rlhf_lens.runs import Run


@dataclass(frozen=True)
class PairedSection:
    """A section of the comparison: rows of (title, anchor, entry of run A or None, entry of run B or None)."""

    id: str
    title: str
    intro: str = ""
    rows: tuple[tuple[str, str, Entry | None, Entry | None], ...] = field(default_factory=tuple)


def render_comparison(run_a: Run, run_b: Run, whole: Sequence[Section], paired: Sequence[PairedSection]) -> str:
    """The comparison page: a summary with both runs and their verdicts side by side, then `whole` sections
    (results about both runs at once: config differences, overlaid curves), then the `paired` sections."""
    body = views.render_template(
        "compare_summary.html.j2",
        name_a=run_a.name,
        name_b=run_b.name,
        trained_a=trained_sentence(run_a),
        trained_b=trained_sentence(run_b),
        verdicts=_verdict_rows(paired),
    )
    for section in whole:
        body += views.render_template("section.html.j2", section=section)
    for section in paired:
        body += views.render_template("paired_section.html.j2", section=section, name_a=run_a.name, name_b=run_b.name)
    toc = [("summary", "Summary")] + [(s.id, s.title) for s in whole] + [(s.id, s.title) for s in paired]
    subtitle = f"A: {run_a.path} · B: {run_b.path}"
    return render_page(f"RLHF runs compared: {run_a.name} vs {run_b.name}", subtitle, body, toc)


def _verdict_rows(paired: Sequence[PairedSection]) -> list[tuple]:
    rows = []
    for section in paired:
        for title, _, a, b in section.rows:
            checks_a = {v.check: v for v in (a.verdicts if a else ())}
            checks_b = {v.check: v for v in (b.verdicts if b else ())}
            for check in list(checks_a) + [c for c in checks_b if c not in checks_a]:
                rows.append((title, check, checks_a.get(check), checks_b.get(check)))
    return rows
