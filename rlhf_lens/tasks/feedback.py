"""Feedback file formats: validate records and read JSONL, HH-RLHF pairs and CSV ratings.

The record kinds (DESIGN.md, "Feedback")::

    {"kind": "rating",     "prompt", "completion", "rating": 1..5, "labeler"?}
    {"kind": "comparison", "prompt", "chosen", "rejected", "labeler"?}
    {"kind": "ranking",    "prompt", "completions": [...], "order": [...], "labeler"?}   order: best first
    {"kind": "critique",   "prompt", "completion", "critique", "verdict": "good"|"bad", "labeler"?}

``read_feedback(path)`` also accepts, line by line in a JSONL file:

- HH-RLHF pairs ``{"chosen": "<dialogue>", "rejected": "<dialogue>"}``: the
  shared prompt is split off (see ``split_hh_pair``), labeler "hh-rlhf";
- preference pairs without a kind ``{"prompt", "chosen", "rejected"}`` (TRL's
  format): read as comparisons;

and ``.csv`` files with columns ``prompt, completion, rating[, labeler]``.
Files are UTF-8, with or without a byte-order mark. Every problem raises
``FeedbackError`` naming file, line and field, with the fix. Records come back
normalised: ``labeler`` is always present (None when unknown), integral float
ratings become ints, extra fields are kept.

A record that repeats an earlier one exactly (every field, after
normalisation) is kept, since a repeated judgement may be real (a noisy
labeler asked twice; a policy that sampled the same answer twice), and a
warning names the file and the lines; ``read_feedback_file`` also returns them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

KINDS: tuple[str, ...] = ("rating", "comparison", "ranking", "critique")
VERDICTS: tuple[str, ...] = ("good", "bad")
HH_ASSISTANT = "\n\nAssistant:"
HH_LABELER = "hh-rlhf"
_REQUIRED: dict[str, tuple[str, ...]] = {
    "rating": ("prompt", "completion", "rating"),
    "comparison": ("prompt", "chosen", "rejected"),
    "ranking": ("prompt", "completions", "order"),
    "critique": ("prompt", "completion", "critique", "verdict"),
}


MAX_NESTING = 100
"""Deepest nesting of lists and objects a JSONL record may have (a record is an object of strings and lists of strings;
much deeper nesting would overflow the stack of json and of every later reader)."""
MAX_CSV_CELL = 10_000_000
"""Longest CSV cell read, in characters (about 2.5M tokens, longer than any context this toolkit trains with). Python's
csv module stops at 131,072, which refuses real long completions; a longer cell is almost always a quote left open."""
_CSV_PARSER_LIMIT = 2**31 - 1  # csv.field_size_limit takes a C long: sys.maxsize overflows where that is 32 bits (Windows)
_RESAVE = "Re-save the file as UTF-8 (e.g. iconv -f cp1252 -t utf-8 OLD > NEW, or 'CSV UTF-8' in a spreadsheet's Save As)"


class FeedbackError(ValueError):
    """A feedback file or record that cannot be used; says where (file, line, field), what is wrong and the fix.

    ``line`` is None for a problem with the whole file (empty, a directory, unreadable)."""

    def __init__(self, file: str, line: int | None, field: str | None, problem: str, fix: str = "Fix the record or drop it.") -> None:
        self.file = file
        self.line = line
        self.field = field
        self.problem = problem
        self.fix = fix
        where = file + ("" if line is None else f":{line}") + ": " + (f"field {field!r}: " if field else "")
        super().__init__(f"{where}{problem}. {fix}")


@dataclass(frozen=True)
class FeedbackFile:
    """What ``read_feedback_file`` found in one feedback file."""

    path: str
    records: list[dict]
    """Every record, validated and normalised, in file order (what ``read_feedback`` returns)."""
    duplicates: tuple[tuple[int, int], ...]
    """(line, line of its first copy) for each record that repeats an earlier one exactly; kept in ``records``."""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _rating(value: Any, fail: Callable[[str], NoReturn]) -> int:
    """An integer 1..5 from an int or an integral float; ``fail(problem)`` raises otherwise."""
    expected = "expected an integer 1..5"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"{expected}, got {_short(value)} ({type(value).__name__})")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        fail(f"{expected}, got {value!r}")
    if not 1 <= value <= 5:
        fail(f"{expected}, got {value!r}")
    return int(value)


def validate_record(record: dict, *, source: str = "<memory>", line: int = 0) -> dict:
    """The record, checked and normalised; ``FeedbackError`` naming ``source``:``line`` and the field otherwise.

    Empty completions are valid (an empty answer can be rated). A comparison
    whose chosen and rejected are identical is an error: it carries no preference.
    """

    def fail(field: str | None, problem: str) -> NoReturn:
        raise FeedbackError(source, line, field, problem)

    if not isinstance(record, dict):
        fail(None, f"expected a JSON object, got {type(record).__name__}")
    kind = record.get("kind")
    if kind is None:
        fail("kind", f"missing; expected one of {', '.join(KINDS)}")
    if kind not in KINDS:
        fail("kind", f"expected one of {', '.join(KINDS)}, got {_short(kind)}")
    for name in _REQUIRED[kind]:
        if name not in record:
            fail(name, f"missing (a {kind} record needs {', '.join(_REQUIRED[kind])})")
    out = dict(record)
    for name in ("prompt", "completion", "chosen", "rejected", "critique"):
        if name in _REQUIRED[kind] and not isinstance(record[name], str):
            fail(name, f"expected a string, got {_short(record[name])} ({type(record[name]).__name__})")
    labeler = record.get("labeler")
    if labeler is not None and not isinstance(labeler, str):
        fail("labeler", f"expected a string or null, got {_short(labeler)}")
    out["labeler"] = labeler

    if kind == "rating":
        out["rating"] = _rating(record["rating"], lambda problem: fail("rating", problem))
    elif kind == "comparison":
        if record["chosen"] == record["rejected"]:
            fail("chosen", "identical chosen and rejected carry no preference")
    elif kind == "ranking":
        completions, order = record["completions"], record["order"]
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            fail("completions", f"expected a list of strings, got {_short(completions)}")
        if len(completions) < 2:
            fail("completions", f"expected at least 2 completions to rank, got {len(completions)}")
        if (
            not isinstance(order, list)
            or any(isinstance(i, bool) or not isinstance(i, int) for i in order)
            or sorted(order) != list(range(len(completions)))
        ):
            fail(
                "order", f"expected a permutation of 0..{len(completions) - 1} (indices into completions, best first), got {_short(order)}"
            )
    elif kind == "critique":
        if record["verdict"] not in VERDICTS:
            fail("verdict", f"expected 'good' or 'bad', got {_short(record['verdict'])}")
    return out


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen_completion, rejected_completion) from two full HH-RLHF dialogues.

    The prompt is the longest common prefix cut just after its last
    "\\n\\nAssistant:"; without one, cut at the last whitespace of the common
    prefix (the completions then start with that whitespace). prompt +
    completion gives back each dialogue exactly.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut >= 0:
        cut += len(HH_ASSISTANT)
    else:
        spaces = [i for i, ch in enumerate(common) if ch.isspace()]
        cut = spaces[-1] if spaces else 0
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _from_json_line(obj: Any, source: str, line: int) -> dict:
    if isinstance(obj, dict) and "kind" not in obj and "chosen" in obj and "rejected" in obj:
        for name in ("chosen", "rejected"):
            if not isinstance(obj[name], str):
                raise FeedbackError(source, line, name, f"expected a string, got {_short(obj[name])}")
        if obj["chosen"] == obj["rejected"]:
            raise FeedbackError(source, line, "chosen", "identical chosen and rejected carry no preference")
        extra = {k: v for k, v in obj.items() if k not in ("prompt", "chosen", "rejected")}
        if "prompt" in obj:  # TRL-style explicit preference pair
            record = {**extra, "kind": "comparison", "prompt": obj["prompt"], "chosen": obj["chosen"], "rejected": obj["rejected"]}
        else:
            prompt, chosen, rejected = split_hh_pair(obj["chosen"], obj["rejected"])
            record = {"labeler": HH_LABELER, **extra, "kind": "comparison", "prompt": prompt, "chosen": chosen, "rejected": rejected}
        return validate_record(record, source=source, line=line)
    return validate_record(obj, source=source, line=line)


def _open(path: Path, newline: str | None) -> IO[str]:
    try:
        return open(path, encoding="utf-8-sig", newline=newline)  # -sig: a leading byte-order mark is dropped
    except OSError as exc:
        raise FeedbackError(
            str(path), None, None, f"cannot be read ({exc.strerror or exc})", "Check the path and its permissions."
        ) from None


def _decoded(fh: IO[str], path: Path) -> Iterator[str]:
    """The lines of ``fh``; bytes that are not UTF-8 raise a ``FeedbackError`` naming their line and column."""
    try:
        yield from fh
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> FeedbackError:
    """Where ``path`` first stops being UTF-8 (read again as bytes: the text reader's error names no line)."""
    source, data = str(path), path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        fix = "Re-save the file as UTF-8 (e.g. iconv -f utf-16 -t utf-8 OLD > NEW)"
        return FeedbackError(source, 1, None, "the file is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8", fix)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = 1 + before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n")  # line breaks as the text reader counts them
        line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
        column = len(before[line_start:].decode("utf-8-sig" if line_start == 0 else "utf-8")) + 1
        bad = " ".join(f"0x{b:02x}" for b in data[exc.start : exc.end])
        return FeedbackError(source, line, None, f"not UTF-8: byte {bad} at column {column} (byte offset {exc.start} in the file)", _RESAVE)
    return FeedbackError(source, None, None, "is not UTF-8", _RESAVE)


def _nesting(value: Any) -> int:
    """Levels of lists and objects in ``value`` (0 for a string or number); iterative, so safe at any depth."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _parse_json_line(raw: str, source: str, line: int) -> Any:
    too_deep = f"nested too deeply (more than {MAX_NESTING} levels of [ ] or {{ }}; a record is an object of strings and lists)"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FeedbackError(source, line, None, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # json's parser recurses once per level
        raise FeedbackError(source, line, None, too_deep) from None
    if _nesting(obj) > MAX_NESTING:
        raise FeedbackError(source, line, None, too_deep)
    return obj


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    source = str(path)
    records = []
    with _open(path, newline=None) as fh:
        for line_no, raw in enumerate(_decoded(fh, path), start=1):
            if not raw.strip():
                continue
            records.append((line_no, _from_json_line(_parse_json_line(raw, source, line_no), source, line_no)))
    if not records:
        raise FeedbackError(
            source, None, None, "holds no feedback records (it is empty or blank)", "Point to a file with one JSON record per line."
        )
    return records


def _csv_rating(text: str, source: str, line: int) -> int:
    def fail(problem: str) -> NoReturn:
        raise FeedbackError(source, line, "rating", problem)

    if not text.strip():
        fail("expected an integer 1..5, got an empty cell")
    try:
        value = float(text)
    except ValueError:
        fail(f"expected an integer 1..5, got {_short(text)}")
    return _rating(value, fail)


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """csv's longest field, set for the duration (the limit is process-wide)."""
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _csv_rows(lines: Iterable[str], source: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, cells) of each row, the header included; csv's own errors name the line."""
    rows = csv.reader(lines)
    last = 0
    while True:
        try:
            cells = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FeedbackError(source, last + 1, None, f"unreadable CSV ({exc})", "Fix the quoting of this row.") from None
        yield last + 1, cells
        last = rows.line_num  # a quoted cell can span lines


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    source = str(path)
    records = []
    with _open(path, newline="") as fh, _csv_field_limit(_CSV_PARSER_LIMIT):
        rows = _csv_rows(_decoded(fh, path), source)
        _, header = next(rows, (1, None))
        if header is None:
            raise FeedbackError(
                source,
                None,
                None,
                "is empty",
                "A ratings CSV needs a header line prompt,completion,rating[,labeler] and one row per rating.",
            )
        for name in ("prompt", "completion", "rating"):
            if name not in header:
                raise FeedbackError(
                    source, 1, name, f"missing column; a ratings CSV needs columns prompt, completion, rating[, labeler], got {header}"
                )
        for line_no, cells in rows:
            if not any(c.strip() for c in cells):
                continue
            for column, (name, cell) in enumerate(zip(header, cells), start=1):
                if len(cell) > MAX_CSV_CELL:
                    raise FeedbackError(
                        source,
                        line_no,
                        name,
                        f"the cell in column {column} is {len(cell):,} characters long, over the {MAX_CSV_CELL:,} this reader accepts "
                        "(a quote left open runs a cell on to the next quote)",
                        "Close the quote, or shorten the cell.",
                    )
            if len(cells) != len(header):
                hint = " (a cell runs over several lines: is a quote left open?)" if any("\n" in c or "\r" in c for c in cells) else ""
                raise FeedbackError(source, line_no, None, f"expected {len(header)} cells like the header, got {len(cells)}{hint}")
            row = dict(zip(header, cells))
            record: dict[str, Any] = {k: v for k, v in row.items() if k not in ("prompt", "completion", "rating", "labeler")}
            record.update(
                kind="rating",
                prompt=row["prompt"],
                completion=row["completion"],
                rating=_csv_rating(row["rating"], source, line_no),
                labeler=row.get("labeler") or None,
            )
            records.append((line_no, validate_record(record, source=source, line=line_no)))
    if not records:
        raise FeedbackError(source, None, None, "has a header but no rating rows", "Add rows, or point to the right file.")
    return records


def _duplicates(numbered: list[tuple[int, dict]]) -> tuple[tuple[int, int], ...]:
    """(line, first line) of each record equal to an earlier one; compared by digest, so a large file is not held twice."""
    first: dict[bytes, int] = {}
    found = []
    for line, record in numbered:
        key = hashlib.blake2b(json.dumps(record, sort_keys=True).encode(), digest_size=16).digest()
        if key in first:
            found.append((line, first[key]))
        else:
            first[key] = line
    return tuple(found)


def _duplicates_message(source: str, duplicates: tuple[tuple[int, int], ...]) -> str:
    shown = ", ".join(f"{line} (= line {of})" for line, of in duplicates[:5]) + (", ..." if len(duplicates) > 5 else "")
    n = len(duplicates)
    return (
        f"{source}: {n} record{'s' if n > 1 else ''} repeat{'' if n > 1 else 's'} an earlier record exactly, on line{'s' if n > 1 else ''} "
        f"{shown}; kept, so each repeat counts again. Delete the repeats if they are copies, or give repeated "
        'judgements a field that tells them apart (e.g. "round": 2).'
    )


def _read(path: str | os.PathLike, *, stacklevel: int) -> FeedbackFile:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feedback file {path} does not exist (expected a .jsonl or .csv file)")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise FeedbackError(str(path), None, None, f"is {what}, not a feedback file", "Give the path of a .jsonl or .csv file.")
    numbered = _read_csv(path) if path.suffix.lower() == ".csv" else _read_jsonl(path)
    duplicates = _duplicates(numbered)
    if duplicates:
        warnings.warn(_duplicates_message(str(path), duplicates), stacklevel=stacklevel + 1)
    return FeedbackFile(str(path), [record for _, record in numbered], duplicates)


def read_feedback_file(path: str | os.PathLike) -> FeedbackFile:
    """``read_feedback``'s records with what else the file showed (records repeated exactly, with their lines)."""
    return _read(path, stacklevel=2)


def read_feedback(path: str | os.PathLike) -> list[dict]:
    """All feedback records in ``path`` (``.csv``: ratings; anything else: JSONL), validated, in file order.

    Records repeated exactly are kept, with a warning naming their lines (``read_feedback_file`` returns them)."""
    return _read(path, stacklevel=2).records
