"""The report of one run: a summary (what was trained, headline numbers, every verdict), then one section per
analysis topic. Built from result objects it is given; it imports no analysis module.

A result is anything with `title`, `to_html()`, `verdicts` (items with level, check, evidence,
threshold) and `headlines()` ((label, value) pairs): the Results of `rlhf_lens.analyses`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.runs import Run, atomic_write_bytes
from rlhf_lens.runs.env import package_version

LEVEL_ORDER = {"flag": 0, "warn": 1, "ok": 2}


@dataclass(frozen=True)
class Entry:
    """One analysis result in a section, or the reason it is missing."""

    title: str
    anchor: str
    """Unique id in the page, for links from the summary."""
    html: Markup = Markup("")
    verdicts: tuple[Any, ...] = ()
    headlines: tuple[tuple[str, str], ...] = ()
    skipped: str = ""

    @classmethod
    def of_result(cls, result: Any, anchor: str) -> Entry:
        """An entry showing `result` (anything shaped like an analysis Result)."""
        return cls(result.title, anchor, result.to_html(), tuple(result.verdicts), tuple(result.headlines()))

    @classmethod
    def missing(cls, title: str, anchor: str, reason: str) -> Entry:
        """An entry saying why an analysis could not run on this run."""
        return cls(title, anchor, skipped=reason)


@dataclass(frozen=True)
class Section:
    """A linkable part of the report."""

    id: str
    title: str
    intro: str = ""
    entries: tuple[Entry, ...] = field(default_factory=tuple)


def anchor_for(*parts: str | None) -> str:
    """A page id from some names ("reward_model.checkpoints", "reward") -> "reward_model-checkpoints--reward"."""
    text = "--".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "entry"


def render_page(title: str, subtitle: str, body: Markup, toc: Sequence[tuple[str, str]] = ()) -> str:
    """A complete self-contained HTML page: our stylesheet allowed by hash in a strict CSP, no script."""
    return views.render_template(
        "page.html.j2",
        title=title,
        subtitle=subtitle,
        body=body,
        toc=list(toc),
        csp=views.content_security_policy(),
        css=views.STYLESHEET_MARKUP,
        version=package_version("rlhf-lens"),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def render_report(run: Run, sections: Sequence[Section]) -> str:
    """The report page of `run` from its analysis sections."""
    body = summary_html(run, sections)
    for section in sections:
        body += views.render_template("section.html.j2", section=section)
    toc = [("summary", "Summary")] + [(s.id, s.title) for s in sections]
    subtitle = f"task {run.task} · seed {run.seed} · created {run.manifest['created']} · {run.path}"
    return render_page(f"RLHF run report: {run.name}", subtitle, body, toc)


def summary_html(run: Run, sections: Sequence[Section]) -> Markup:
    """What was trained, the headline numbers and every verdict (flags first), each linked to its entry."""
    entries = [(section, entry) for section in sections for entry in section.entries]
    headlines = [(label, value, entry.anchor) for _, entry in entries for label, value in entry.headlines]
    verdicts = [(v, entry.anchor, entry.title) for _, entry in entries for v in entry.verdicts]
    verdicts.sort(key=lambda item: LEVEL_ORDER.get(item[0].level, 3))
    skipped = [(entry.title, entry.skipped) for _, entry in entries if entry.skipped]
    return views.render_template("summary.html.j2", trained=trained_sentence(run), headlines=headlines, verdicts=verdicts, skipped=skipped)


def trained_sentence(run: Run) -> str:
    """One sentence on what the run trained: its stages in order, with their kind and size."""
    configs = {s.get("name"): s for s in run.config.get("stages", [])}
    parts = []
    for stage in run.stages():
        config = configs.get(stage.name, {})
        detail = [str(config[k]) for k in ("algorithm", "reward_kind") if config.get(k)]
        if config.get("steps"):
            detail.append(f"{config['steps']} steps")
        if stage.name != stage.kind:
            detail.insert(0, stage.kind)
        if stage.status != "done":
            detail.append(stage.status)
        parts.append(f"{stage.name} ({', '.join(detail)})" if detail else stage.name)
    model = run.config.get("model", {})
    shape = f"a {model.get('arch', '?')} of {model.get('n_layer', '?')} layers, d_model {model.get('d_model', '?')}" if model else "a model"
    return f"Run {run.name} trained {shape} through {len(parts)} stage(s): " + " → ".join(parts) + "."


def write_report(path: str | os.PathLike[str], html: str) -> Path:
    """Write the page atomically: a crash leaves the previous file intact."""
    return atomic_write_bytes(Path(path), html.encode("utf-8"))
