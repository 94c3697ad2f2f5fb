"""Read-only descriptions of a run's stages and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageInfo:
    """One stage of a run, as recorded in run.json."""

    name: str
    """Stage name, also its folder name under checkpoints/ (e.g. "sft", "reward_small")."""
    kind: str
    """One of "base", "sft", "reward", "policy"; analyses find stages by kind."""
    status: str
    """One of "pending", "running", "done", "failed"."""
    checkpoints: tuple[str, ...]
    """Checkpoint tags the writer recorded, in the order they were saved."""
    init_from: dict[str, Any] | None
    """{"spec", "path", "sha256"} when the stage started from another run's checkpoint."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint folder (its meta.json exists and parses)."""

    stage: str
    """Stage the checkpoint belongs to."""
    tag: str
    """"step-000050" or "final"."""
    step: int
    """Optimizer step at which it was saved."""
    path: Path
    """The checkpoint folder (a plain HF save_pretrained folder plus meta/state files)."""
    meta: dict[str, Any]
    """Contents of meta.json: stage, kind, step, tag, created, metrics, and any extras."""
