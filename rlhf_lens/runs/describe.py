"""A plain-text description of a run (what `rlhf-lens inspect` prints)."""

from __future__ import annotations

from typing import Any

from .reader import Run


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def describe_run(run: Run) -> str:
    """Manifest, stages with their checkpoints, data files and recorded results, as text."""
    m = run.manifest
    env = m.get("env", {})
    lines = [
        f"run       {run.name}  ({run.path})",
        f"format    {m['format']} v{m['format_version']}, created {m['created']}",
        f"task      {run.task}   seed {run.seed}",
        "env       " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None),
        "",
        "stages",
    ]
    for stage in run.stages():
        tags = [c.tag for c in run.checkpoints(stage.name)]
        source = f"  init_from {stage.init_from['spec']}" if stage.init_from else ""
        lines.append(f"  {stage.name:<14} {stage.kind:<7} {stage.status:<8} checkpoints: {', '.join(tags) or '-'}{source}")
    lines += ["", "data"]
    for name, entry in sorted(m.get("data", {}).items()):
        lines.append(f"  {name:<16} {entry['records']:>7} records  sha256 {entry['sha256'][:12]}")
    results = m.get("results") or {}
    if results:
        lines += ["", "results"]
        for stage, values in results.items():
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
            lines.append(f"  {stage:<14} {shown}")
    return "\n".join(lines)
