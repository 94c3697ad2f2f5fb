"""JSON Lines files: durable appends, tolerant reads (a torn last line), atomic rewrites."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, maybe_crash_after
from .errors import RunFormatError
from .safe_fs import DiskFullError, is_disk_full


def dump_jsonl_line(record: Mapping[str, Any], path: Path) -> bytes:
    """One record as a UTF-8 JSON line ending in a newline; errors name `path`."""
    if not isinstance(record, Mapping):
        raise TypeError(f"{path}: a JSONL record must be a dict, got {type(record).__name__}")
    try:
        return (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as err:
        raise type(err)(f"{path}: record cannot be written as JSON ({err}): {record!r:.200}") from err


def _parse_object(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _repair_tail(f: Any) -> None:
    """Make an append-mode file end in a newline before appending to it.

    A process killed mid-append leaves a torn last line. Appending after it would
    turn it into a corrupt line in the middle, so: a tail that parses as a record
    gets its missing newline; a torn fragment is cut off (readers skip it anyway).
    """
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    pos = size
    tail = b""
    while pos > 0 and b"\n" not in tail:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
    cut = tail.rfind(b"\n") + 1  # 0 when the whole file is one unterminated line
    start = pos + cut
    if _parse_object(tail[cut:]) is not None:
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
    else:
        f.truncate(start)
    f.seek(0, os.SEEK_END)


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append `record` as one JSON line to `path` (created if missing), flushed and fsynced."""
    path = Path(path)
    line = dump_jsonl_line(record, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        _repair_tail(f)
        end = f.tell()
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        except OSError as err:
            f.truncate(end)  # no torn line left behind
            if is_disk_full(err):
                raise DiskFullError(path, len(line)) from err
            raise
    maybe_crash_after(path)


def read_jsonl(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """Read a JSONL file of objects; return (records, torn_lines).

    Blank lines are skipped. A last line that does not parse (a write cut short)
    is skipped and counted in `torn_lines`; a line that does not parse anywhere
    else raises RunFormatError naming the file and the 1-based line number.
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    # index of the last non-blank line: only that one may be torn
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    torn = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        obj = _parse_object(line)
        if obj is not None:
            records.append(obj)
        elif i == last:
            torn += 1
        else:
            raise RunFormatError(
                f"{path}, line {i + 1}: not a JSON object: {line[:120].decode('utf-8', 'replace')!r}. "
                "Only a torn last line is tolerated; fix or delete this line."
            )
    return records, torn


def rewrite_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> int:
    """Replace `path` atomically with `records`, one per line; return how many were written."""
    path = Path(path)
    lines = [dump_jsonl_line(r, path) for r in records]
    atomic_write_bytes(path, b"".join(lines))
    return len(lines)
