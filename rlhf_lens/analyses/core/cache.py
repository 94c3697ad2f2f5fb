"""Running registered analyses on a run, through the analysis cache (`Run.cache_dir`, <run>/analyses/).

The cache key covers the analysis name and version, the stage, its settings (`Analysis.params`,
with any override), and the fingerprints of every checkpoint and file it reads (`Needs.fingerprints`):
a retrained stage, a new rollout shard, a changed data file or another setting gives a new key, so a
stale result is never served. An unchanged run is served entirely from the cache.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rlhf_lens.analyses.core.registry import Analysis, all_analyses, get_analysis
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.runs import analysis_key

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rlhf_lens.runs import Run

Status = Literal["computed", "cached", "skipped"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one analysis on one target (a stage, or the whole run)."""

    analysis: Analysis
    stage: str | None
    status: Status
    result: Result | None
    """None when skipped."""
    reason: str = ""
    """Why it was skipped."""
    seconds: float = 0.0
    """Time spent computing (or loading from the cache)."""

    @property
    def label(self) -> str:
        return self.analysis.name + (f" [{self.stage}]" if self.stage else "")


@dataclass(frozen=True)
class Task:
    """One analysis to run on one target, with its settings."""

    analysis: Analysis
    stage: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    """Overrides of the analysis's settings (`Analysis.params`); the rest keep their defaults."""


Settings = Mapping[str, Mapping[str, Any]]
"""Overrides of analyses' settings by analysis name: {"attribution.reward_words": {"texts": 64}}."""


def cache_key(run: Run, analysis: Analysis, stage: str | None, params: Mapping[str, Any] | None = None) -> str:
    """The analysis-cache key of `analysis` on `stage` of `run` in its current state, with settings `params`
    (overrides of its defaults)."""
    settings = {"stage": stage, "version": analysis.version, "params": analysis.resolve_params(params)}
    return analysis_key(analysis.name, settings, analysis.needs.fingerprints(run, stage))


def plan(run: Run, only: Iterable[str] | None = None, settings: Settings | None = None) -> list[Task]:
    """Every (analysis, stage) the registry has for `run`, in report order; `only` limits it to some names.

    An analysis of a stage kind the run lacks is planned once with stage None, so it is reported as skipped.
    `settings` overrides analyses' settings (ValueError for an unknown analysis, setting or value type).
    """
    settings = dict(settings or {})
    for name, overrides in settings.items():
        get_analysis(name).resolve_params(overrides)  # refuse a bad setting before anything runs
    chosen = [get_analysis(name) for name in only] if only else all_analyses()
    return [Task(a, stage, dict(settings.get(a.name, {}))) for a in chosen for stage in (a.needs.targets(run) or [None])]


def run_task(run: Run, task: Task, *, force: bool = False) -> Outcome:
    """Compute one task, or load it from the cache when its inputs and settings are unchanged (unless `force`)."""
    analysis, stage = task.analysis, task.stage
    started = time.perf_counter()
    reason = analysis.needs.missing(run, stage)
    if reason is not None:
        return Outcome(analysis, stage, "skipped", None, reason)
    params = analysis.resolve_params(task.params)
    key = cache_key(run, analysis, stage, task.params)
    cached = None if force else run.load_analysis(key)
    if cached is not None:
        df, stored = cached
        return Outcome(analysis, stage, "cached", analysis.result_type.from_cache(df, stored), seconds=time.perf_counter() - started)
    result = analysis.function(run, stage=stage, **params) if stage is not None else analysis.function(run, **params)
    if not isinstance(result, analysis.result_type):
        raise TypeError(f"analysis {analysis.name} returned {type(result).__name__}, not {analysis.result_type.__name__}")
    seconds = time.perf_counter() - started
    stored = result.cache_meta() | {
        "analysis": analysis.name,
        "stage": stage,
        "version": analysis.version,
        "params": params,
        "seconds": round(seconds, 3),
    }
    run.save_analysis(key, result.df, stored)
    return Outcome(analysis, stage, "computed", result, seconds=seconds)


def analyze(
    run: Run, only: Iterable[str] | None = None, *, force: bool = False, quiet: bool = False, settings: Settings | None = None
) -> list[Outcome]:
    """Run every applicable analysis on `run` (or those in `only`), through the cache, with a progress bar.
    `settings` overrides analyses' settings ({"attribution.reward_words": {"texts": 64}})."""
    from tqdm.auto import tqdm

    tasks = plan(run, only, settings)
    outcomes = []
    with tqdm(tasks, desc="analyses", unit="analysis", disable=quiet, leave=False) as bar:
        for task in bar:
            bar.set_postfix_str(task.analysis.name + (f" [{task.stage}]" if task.stage else ""))
            outcomes.append(run_task(run, task, force=force))
    return outcomes
