"""Atomic, durable file writes, and the fault-injection point every write passes through.

A file written here is either absent or complete: the bytes go to a temporary
file in the same folder, are flushed and fsynced, then `os.replace`d over the
target, and the folder is fsynced so the rename itself survives a power cut.

Fault injection: when the environment variable `RLHF_LENS_CRASH_AFTER` equals
the base name of a file that was just put in place (``model.safetensors``,
``meta.json``, ``metrics.jsonl``, ...), the process kills itself with SIGKILL,
so tests can check that a run interrupted at that exact point stays usable.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from .safe_fs import write_bytes

CRASH_ENV = "RLHF_LENS_CRASH_AFTER"
_written = 0


def files_written() -> int:
    """How many files this process has put in place through `rlhf_lens.runs` (what an interrupted command kept)."""
    return _written


def maybe_crash_after(path: str | os.PathLike[str]) -> None:
    """Kill this process with SIGKILL if `RLHF_LENS_CRASH_AFTER` names `path`'s base name.

    Called by every write in `rlhf_lens.runs` right after the file is in place.
    """
    global _written
    _written += 1
    target = os.environ.get(CRASH_ENV)
    if target and Path(path).name == target:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file that someone else wrote (e.g. `save_pretrained`) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames and new entries in folder `path` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, root: str | os.PathLike[str] | None = None) -> Path:
    """Write `data` to `path` atomically (temp file, fsync, `os.replace`, fsync folder).

    No link is followed below `root` (default: `path`'s folder), and a link at `path` itself is refused
    rather than replaced (`rlhf_lens.runs.safe_fs`); a full disk is a `DiskFullError` leaving no partial file.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    write_bytes(root, path.relative_to(root), data)
    maybe_crash_after(path)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, root: str | os.PathLike[str] | None = None) -> Path:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), root=root)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, root: str | os.PathLike[str] | None = None) -> Path:
    """Write `obj` as indented JSON to `path` atomically.

    NaN and infinities are refused (they are not JSON); convert them first, e.g.
    with `rlhf_lens.runs.jsonsafe.to_jsonable(..., nonfinite="null")`.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text, root=root)
