"""Running registered analyses on a run, through the analysis cache under <run>/analyses/.

The cache key covers the analysis name and version, its parameters (the stage), and the
fingerprints of every checkpoint and file it reads (`Needs.fingerprints`): a retrained
stage, a new rollout shard or a changed data file gives a new key, so a stale result is
never served. An unchanged run is served entirely from the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

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
    """One analysis to run on one target."""

    analysis: Analysis
    stage: str | None


def cache_key(run: Run, analysis: Analysis, stage: str | None) -> str:
    """The analysis-cache key of `analysis` on `stage` of `run` in its current state."""
    params = {"stage": stage, "version": analysis.version}
    return analysis_key(analysis.name, params, analysis.needs.fingerprints(run, stage))


def plan(run: Run, only: Iterable[str] | None = None) -> list[Task]:
    """Every (analysis, stage) the registry has for `run`, in report order; `only` limits it to some names.

    An analysis of a stage kind the run lacks is planned once with stage None, so it is reported as skipped.
    """
    chosen = [get_analysis(name) for name in only] if only else all_analyses()
    return [Task(a, stage) for a in chosen for stage in (a.needs.targets(run) or [None])]


def run_task(run: Run, task: Task, *, force: bool = False) -> Outcome:
    """Compute one task, or load it from the cache when its inputs are unchanged (unless `force`)."""
    analysis, stage = task.analysis, task.stage
    started = time.perf_counter()
    reason = analysis.needs.missing(run, stage)
    if reason is not None:
        return Outcome(analysis, stage, "skipped", None, reason)
    key = cache_key(run, analysis, stage)
    cached = None if force else run.load_analysis(key)
    if cached is not None:
        df, stored = cached
        return Outcome(analysis, stage, "cached", analysis.result_type.from_cache(df, stored), seconds=time.perf_counter() - started)
    result = analysis.function(run, stage=stage) if stage is not None else analysis.function(run)
    if not isinstance(result, analysis.result_type):
        raise TypeError(f"analysis {analysis.name} returned {type(result).__name__}, not {analysis.result_type.__name__}")
    seconds = time.perf_counter() - started
    stored = result.cache_meta() | {"analysis": analysis.name, "stage": stage, "version": analysis.version, "seconds": round(seconds, 3)}
    run.save_analysis(key, result.df, stored)
    return Outcome(analysis, stage, "computed", result, seconds=seconds)


def analyze(run: Run, only: Iterable[str] | None = None, *, force: bool = False, quiet: bool = False) -> list[Outcome]:
    """Run every applicable analysis on `run` (or those in `only`), through the cache, with a progress bar."""
    from tqdm.auto import tqdm

    tasks = plan(run, only)
    outcomes = []
    with tqdm(tasks, desc="analyses", unit="analysis", disable=quiet, leave=False) as bar:
        for task in bar:
            bar.set_postfix_str(task.analysis.name + (f" [{task.stage}]" if task.stage else ""))
            outcomes.append(run_task(run, task, force=force))
    return outcomes
