"""Where rlhf-lens keeps what it derives from a folder it cannot (or should not) write into.

A run handed over read-only (a shared drive, a read-only mount, a colleague's folder) still gets its
analyses: their cache and report go to a per-user cache folder instead, keyed by the run's path.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RLHF_LENS_CACHE"
"""Overrides the per-user cache folder (default: $XDG_CACHE_HOME/rlhf-lens, else ~/.cache/rlhf-lens)."""


def user_cache_dir() -> Path:
    """The per-user cache folder of rlhf-lens (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().absolute() / "rlhf-lens"


def is_writable(folder: str | os.PathLike[str]) -> bool:
    """Whether new entries can be made in `folder` (False on a read-only mount or without write permission)."""
    return os.access(folder, os.W_OK | os.X_OK)


__all__ = ["CACHE_ENV", "is_writable", "user_cache_dir"]
