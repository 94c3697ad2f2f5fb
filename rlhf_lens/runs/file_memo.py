"""Read each version of a run's files once: a process-wide memo, and content hashes kept between processes.

A file's version is its `stat_key`: path, size, modification time (ns), inode and change time. Reads
that parse a file (the metrics log, rollout shards, data files) are memoised on the keys of the files
they read (`memoised`), so the eighteen analyses of a cached `analyze` that ask for the same evaluation
samples read them once. Content hashes (`HashIndex`) are computed once per version of a file and kept
in the analyses' cache folder (`file-hashes.json`), so a later process recomputes none of them; the run
folder itself is never written for this (it may be read-only or someone else's).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from .hashing import sha256_file

T = TypeVar("T")
StatKey = tuple[str, int, int, int, int]

_MEMO: OrderedDict[tuple, Any] = OrderedDict()
_MEMO_SIZE = 32
"""Parsed reads kept per process (least recently used dropped first)."""
_HASHES: dict[StatKey, str] = {}
"""Content hashes computed or loaded in this process, by file version."""


def stat_key(path: str | os.PathLike[str]) -> StatKey | None:
    """The version of the file at `path` (following links, as the readers do), or None when it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (str(Path(path).absolute()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def memoised(what: str, paths: Iterable[str | os.PathLike[str]], compute: Callable[[], T]) -> T:
    """`compute()`, or its value from an earlier call with the same `what` over the same versions of `paths`.
    Callers copy what they hand out when it can be changed in place."""
    key = (what, tuple(stat_key(p) for p in paths))
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    value = compute()
    _MEMO[key] = value
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return value


class HashIndex:
    """sha256 of files by version, computed once and kept in a JSON file (the analyses' cache folder)."""

    def __init__(self, scope: Path, store: Path, save: Callable[[bytes], None]) -> None:
        """`scope`: the folder whose files it indexes (a run); `store`: where the index is read from; `save(bytes)`:
        how it is written (no link followed)."""
        self._scope = str(Path(scope).absolute()) + os.sep
        self._store = store
        self._save = save
        self._loaded = False
        self._new = 0

    def sha256(self, path: str | os.PathLike[str]) -> str:
        """The hex sha256 of the file at `path` (FileNotFoundError when it is missing)."""
        key = stat_key(path)
        if key is None:
            raise FileNotFoundError(path)
        if key not in _HASHES:
            self._load()
        if key not in _HASHES:
            _HASHES[key] = sha256_file(path)
            self._new += 1
        return _HASHES[key]

    def flush(self) -> None:
        """Write the hashes computed since the last flush (with those of files still there) to the store.
        A store that cannot be written is left as it is: the hashes are only a cache."""
        if not self._new:
            return
        entries = [list(k) + [v] for k, v in _HASHES.items() if k[0].startswith(self._scope) and stat_key(k[0]) == k]
        try:
            self._save((json.dumps({"format": "rlhf-lens-file-hashes", "files": entries}) + "\n").encode("utf-8"))
        except OSError:
            return
        self._new = 0

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            body = json.loads(self._store.read_bytes().decode("utf-8"))
            for *key, sha in body["files"]:
                _HASHES.setdefault(tuple(key), sha)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return  # no store yet, or a damaged one: hashes are recomputed


def forget() -> None:
    """Drop every memoised read and hash of this process (tests; a run rewritten within one second)."""
    _MEMO.clear()
    _HASHES.clear()


__all__ = ["HashIndex", "forget", "memoised", "stat_key"]
