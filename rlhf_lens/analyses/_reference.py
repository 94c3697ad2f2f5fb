"""Which checkpoints the analyses compare: a stage's final one, and the one a policy stage started from (its
reference policy, as run.json records it)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from rlhf_lens.runs import FINAL_TAG, Run


class Reference(NamedTuple):
    """Where a policy stage's starting policy lives."""

    path: Path
    """The checkpoint folder."""
    description: str
    """"<stage>/<tag>" for a checkpoint of this run, else the folder."""
    stage: str | None
    """The stage of this run it belongs to (None: a folder outside the run)."""
    tag: str | None


def policy_reference_folder(run: Run, stage: str) -> Reference:
    """The checkpoint policy stage `stage` started from (run.json's `policy_from`): one of this run's checkpoints
    when it is one, else the recorded folder. Errors name what is missing and how to fix it."""
    recorded = str(run.manifest.get("results", {}).get(stage, {}).get("policy_from", ""))
    if not recorded:
        raise ValueError(
            f"run {run.path}: run.json records no `policy_from` for stage {stage!r} (the stage did not finish); "
            "the reference policy it started from is unknown"
        )
    parts = Path(recorded).parts
    if len(parts) >= 3 and parts[-3] == "checkpoints" and parts[-2] in {s.name for s in run.stages()}:
        if parts[-1] in [c.tag for c in run.checkpoints(parts[-2])]:
            return Reference(run.checkpoint(parts[-2], parts[-1]).path, f"{parts[-2]}/{parts[-1]}", parts[-2], parts[-1])
    if not Path(recorded).is_dir():
        raise FileNotFoundError(
            f"run {run.path}: stage {stage!r} started from {recorded}, which no longer exists; "
            "put that checkpoint back to compare the policy with its reference"
        )
    return Reference(Path(recorded), recorded, None, None)


def final_tag(run: Run, stage: str) -> str:
    """The tag of `stage`'s final checkpoint, or of its last complete one when the stage did not finish."""
    tags = [c.tag for c in run.checkpoints(stage)]
    return FINAL_TAG if FINAL_TAG in tags else tags[-1]


def reference_missing(run: Run, stage: str | None) -> str | None:
    """Why policy stage `stage` cannot be compared with the policy it started from, or None (a `Needs.requires`)."""
    if stage is None or not run.checkpoints(stage):
        return f"stage {stage!r} has no complete checkpoint"
    if not run.manifest.get("results", {}).get(stage, {}).get("policy_from"):
        hint = " (for a TRL folder, name the model it started from: --reference FOLDER)" if run.config.get("source") == "trl" else ""
        return f"run.json records no policy_from for stage {stage!r}: the policy it started from is unknown{hint}"
    return None
