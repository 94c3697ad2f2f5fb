"""Open a run directory, or another tool's output folder through its adapter, as a `Run`."""

from __future__ import annotations

import os
from pathlib import Path

from .layout import run_json_path
from .reader import Run
from .trl import is_trl_output
from .trl_view import trl_view


def open_run(
    path: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str] | None = None,
    prompts: str | os.PathLike[str] | None = None,
    task: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Run:
    """The run at `path`: a run directory, or a TRL output folder read through its view (`rlhf_lens.runs.trl_view`).

    `reference`, `prompts` and `task` apply to TRL folders only (see `trl_view`); a run directory records its own.
    `cache_dir`: where the analyses' cache goes (see `Run.cache_dir`).
    """
    path = Path(path)
    if run_json_path(path).is_file():
        given = [name for name, value in (("reference", reference), ("prompts", prompts), ("task", task)) if value is not None]
        if given:
            raise ValueError(
                f"{path} is an rlhf-lens run, which records its own reference policy, prompts and task; "
                f"{', '.join(given)} apply only to TRL output folders: leave them out"
            )
        return Run.open(path, cache_dir=cache_dir)
    if path.is_dir() and is_trl_output(path):
        return Run.open(trl_view(path, reference=reference, prompts=prompts, task=task), cache_dir=cache_dir)
    return Run.open(path, cache_dir=cache_dir)  # its error says what a run directory is


__all__ = ["open_run"]
