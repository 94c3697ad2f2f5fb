"""The software environment a run was written in, for run.json's `env`."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from typing import Any


def package_version(distribution: str, default: str = "0+unknown") -> str:
    """Installed version of `distribution`, or `default` when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return default


def git_commit(cwd: str | None = None) -> str | None:
    """`git rev-parse HEAD` of the repository at `cwd` (default: current folder), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def collect_env() -> dict[str, Any]:
    """{"python", "torch", "transformers", "rlhf_lens", "git_commit", "device"} for run.json."""
    import torch  # deferred: importing rlhf_lens.runs stays cheap

    return {
        "python": platform.python_version(),
        "torch": package_version("torch", "not installed"),
        "transformers": package_version("transformers", "not installed"),
        "rlhf_lens": package_version("rlhf-lens"),
        "git_commit": git_commit(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
