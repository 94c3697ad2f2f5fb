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
Every problem raises ``FeedbackError`` naming file, line and field. Records
come back normalised: ``labeler`` is always present (None when unknown),
integral float ratings become ints, extra fields are kept.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

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


class FeedbackError(ValueError):
    """A feedback record that cannot be used; says where (file, line, field) and what is wrong."""

    def __init__(self, file: str, line: int, field: str | None, problem: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{file}:{line}: " + (f"field {field!r}: " if field else "")
        super().__init__(f"{where}{problem}. Fix the record or drop it.")


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


def _read_jsonl(path: Path) -> list[dict]:
    source = str(path)
    records = []
    with open(path, encoding="utf-8") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise FeedbackError(source, line_no, None, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
            records.append(_from_json_line(obj, source, line_no))
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


def _read_csv(path: Path) -> list[dict]:
    source = str(path)
    records = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None) or []
        for name in ("prompt", "completion", "rating"):
            if name not in header:
                raise FeedbackError(
                    source, 1, name, f"missing column; a ratings CSV needs columns prompt, completion, rating[, labeler], got {header}"
                )
        last = rows.line_num
        for cells in rows:
            line_no, last = last + 1, rows.line_num  # first physical line of this (maybe multi-line) row
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise FeedbackError(source, line_no, None, f"expected {len(header)} cells like the header, got {len(cells)}")
            row = dict(zip(header, cells))
            record: dict[str, Any] = {k: v for k, v in row.items() if k not in ("prompt", "completion", "rating", "labeler")}
            record.update(
                kind="rating",
                prompt=row["prompt"],
                completion=row["completion"],
                rating=_csv_rating(row["rating"], source, line_no),
                labeler=row.get("labeler") or None,
            )
            records.append(validate_record(record, source=source, line=line_no))
    return records


def read_feedback(path: str | os.PathLike) -> list[dict]:
    """All feedback records in ``path`` (``.csv``: ratings; anything else: JSONL), validated, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feedback file {path} does not exist (expected a .jsonl or .csv file)")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    return _read_jsonl(path)
