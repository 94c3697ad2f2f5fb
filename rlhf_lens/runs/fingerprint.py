"""Fingerprints of what an analysis read, so its cache key changes when any of it changes.

A checkpoint is identified by its meta.json (written last, it holds the save time and
metrics, so a retrained stage gets a new one) and the size of each weight file; a log
or data file by its sha256, computed once per version of the file (`Run.file_sha256`).
Nothing is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .layout import data_path, eval_rollouts_dir, meta_path, metrics_path, rollouts_dir, run_json_path

if TYPE_CHECKING:
    from .reader import Run

_SHORT = 16  # hex digits kept per file: plenty to tell versions of one file apart


def checkpoint_fingerprints(run: Run, stage: str) -> list[str]:
    """ "<stage>/<tag>:<meta.json sha>:<weight sizes>" for each complete checkpoint of `stage`."""
    out = []
    for cp in run.checkpoints(stage):
        sizes = ",".join(str(p.stat().st_size) for p in sorted(cp.path.glob("*.safetensors")))
        out.append(f"{stage}/{cp.tag}:{run.file_sha256(meta_path(cp.path))[:_SHORT]}:{sizes}")
    return out


def file_fingerprint(run: Run, label: str, path) -> str:
    """ "<label>:<sha256>" of one file, or "<label>:missing"."""
    return f"{label}:{run.file_sha256(path)[:_SHORT] if path.is_file() else 'missing'}"


def shard_fingerprints(run: Run, label: str, folder) -> list[str]:
    """One fingerprint per step-*.parquet shard in `folder`."""
    shards = sorted(folder.glob("step-*.parquet")) if folder.is_dir() else []
    return [file_fingerprint(run, f"{label}/{shard.name}", shard) for shard in shards]


def input_fingerprints(
    run: Run,
    *,
    checkpoints_of: Iterable[str] = (),
    data: Iterable[str] = (),
    metrics: bool = False,
    rollouts_of: Iterable[str] = (),
    eval_rollouts_of: Iterable[str] = (),
    manifest: bool = False,
) -> list[str]:
    """Fingerprints of the named inputs of `run`, in a fixed order (see the module docstring)."""
    out = [file_fingerprint(run, "run.json", run_json_path(run.path))] if manifest else []
    for stage in checkpoints_of:
        out += checkpoint_fingerprints(run, stage)
    out += [file_fingerprint(run, f"data/{kind}", data_path(run.path, kind)) for kind in data]
    if metrics:
        out.append(file_fingerprint(run, "metrics", metrics_path(run.path)))
    for stage in rollouts_of:
        out += shard_fingerprints(run, f"rollouts/{stage}", rollouts_dir(run.path, stage))
    for stage in eval_rollouts_of:
        out += shard_fingerprints(run, f"eval_rollouts/{stage}", eval_rollouts_dir(run.path, stage))
    return out
