"""Resolve an `init_from` spec ("runs/X:sft/final") to a checkpoint folder and its digest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .hashing import sha256_file
from .layout import FINAL_TAG, RUN_JSON
from .reader import Run
from .weights import weights_sha256

__all__ = ["resolve_init_from", "sha256_file"]


def parse_init_from(spec: str) -> tuple[str, str, str]:
    """ "runs/X:sft/final" -> ("runs/X", "sft", "final"); the tag defaults to "final"."""
    run_part, sep, where = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    stage, _, tag = where.partition("/")
    if not sep or not run_part or not stage or "/" in tag:
        raise ValueError(f"init_from {spec!r} is not of the form '<run path>:<stage>[/<tag>]', e.g. 'runs/base:sft/final'")
    return run_part, stage, tag or FINAL_TAG


def resolve_init_from(spec: str, base_dir: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """{"spec", "path" (absolute checkpoint folder), "sha256" (of its model.safetensors)} for `spec`.

    The run path in `spec` is relative to `base_dir` unless absolute. Raises
    FileNotFoundError for a missing run and RunLookupError for a missing stage or
    tag, each listing what exists.
    """
    run_part, stage, tag = parse_init_from(spec)
    run_path = Path(base_dir) / run_part
    if not (run_path / RUN_JSON).is_file():
        parent = run_path.parent
        runs = sorted(p.name for p in parent.iterdir() if (p / RUN_JSON).is_file()) if parent.is_dir() else []
        raise FileNotFoundError(
            f"init_from {spec!r}: no run at {run_path.absolute()} (no {RUN_JSON}); runs in {parent.absolute()}: {runs or 'none'}"
        )
    checkpoint = Run.open(run_path).checkpoint(stage, tag)
    return {"spec": spec, "path": str(checkpoint.path.absolute()), "sha256": weights_sha256(checkpoint.path)}
