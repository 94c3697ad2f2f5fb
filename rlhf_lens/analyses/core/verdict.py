"""Verdicts: what a check that judges returns (ok / warn / flag), with its evidence and threshold."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Level = Literal["ok", "warn", "flag"]
LEVELS: tuple[Level, ...] = ("ok", "warn", "flag")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check, in words a reader can verify."""

    check: str
    """What was checked, e.g. "reward model calibration"."""
    level: Level
    """"ok", "warn" (look at it) or "flag" (something is wrong)."""
    evidence: str
    """The measured figures the level rests on, e.g. "ECE 0.21 over 2,880 held-out pairs"."""
    threshold: str
    """The rule applied, e.g. "warn above 0.05, flag above 0.15"."""
    value: float | None = None
    """The measured figure the thresholds apply to, when there is one."""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"Verdict.level must be one of {LEVELS}, got {self.level!r}")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if out["value"] is not None and not math.isfinite(out["value"]):
            out["value"] = None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        return cls(**data)


def judge(value: float, *, warn: float, flag: float, higher_is_worse: bool = True) -> Level:
    """The level of `value` against two thresholds: flag past `flag`, warn past `warn`, else ok.

    With `higher_is_worse=False` the thresholds are lower bounds (warn below `warn`, flag below `flag`).
    A NaN value is a warning: the check could not be made.
    """
    if math.isnan(value):
        return "warn"
    worse = (lambda limit: value > limit) if higher_is_worse else (lambda limit: value < limit)
    if worse(flag):
        return "flag"
    if worse(warn):
        return "warn"
    return "ok"


def worst(levels: list[Level]) -> Level:
    """The most severe of some levels ("ok" for none)."""
    return max(levels, key=LEVELS.index, default="ok")
