"""Read a TRL output folder: its checkpoints, its trainer state and log history, which trainer wrote it.

A TRL trainer (GRPOTrainer, DPOTrainer, RLOOTrainer, ...) writes `checkpoint-N/` HF folders, each with
a `trainer_state.json` holding the log history, and `trainer.save_model(output_dir)` puts the final
model at the top. `rlhf_lens.runs.trl_view` writes a run-directory view of such a folder from what is
read here. Only JSON is read: `training_args.bin`, `rng_state*.pth`, `optimizer.pt`, `scheduler.pt`
and any other pickle in the folder are never opened.

Folders handed over by others are checked as they are read: a checkpoint folder (or a file in one)
that is a link to somewhere outside the TRL folder is refused, and a trainer state with a step that is
not an integer, or log records that are not objects, gets a RunFormatError naming the file and field.
NaN and infinite values, which the Trainer writes when a run diverges, are kept as NaN.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from .errors import RunFormatError
from .keys import TRL_TO_OURS

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_MAX_STEP = 10**12
"""Largest step accepted from a trainer state: far beyond any real run, small enough for every int field."""


def is_trl_output(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` looks like a TRL (HF Trainer) output folder: a trainer_state.json at the top or in a
    checkpoint-N/ folder."""
    folder = Path(folder)
    return (folder / TRAINER_STATE).is_file() or any((cp / TRAINER_STATE).is_file() for _, cp in trl_checkpoints(folder))


def trl_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, checkpoint-N folder) of `folder`, by step. A checkpoint folder that is a link to somewhere outside
    `folder` is a RunFormatError (a folder handed over must not make rlhf-lens read elsewhere)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            refuse_outside_link(path, folder)
            found.append((int(match.group(1)), path))
    return sorted(found)


def refuse_outside_link(path: Path, folder: Path) -> None:
    """RunFormatError when `path` (inside `folder`) is a link that resolves outside `folder`."""
    if not path.is_symlink():
        return
    target, inside = path.resolve(), folder.resolve()
    if target != inside and inside not in target.parents:
        raise RunFormatError(
            f"{path} is a symbolic link to {target}, outside the TRL folder {folder}; rlhf-lens reads only what is inside "
            f"the folder it is given. Copy the checkpoint into {folder} (or point rlhf-lens at the folder that holds it)"
        )


def read_trainer_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The newest trainer_state.json of a TRL output folder (the one with the highest global_step), checked:
    `global_step` (and `max_steps`, `seed` where present) integers, `log_history` a list of objects."""
    folder = Path(folder)
    paths = [cp / TRAINER_STATE for _, cp in trl_checkpoints(folder)] + [folder / TRAINER_STATE]
    states = [_read_state(path, folder) for path in paths if path.is_file()]
    if not states:
        raise FileNotFoundError(f"{folder} holds no {TRAINER_STATE} (nor checkpoint-N/{TRAINER_STATE}): it is not a TRL output folder")
    return max(states, key=lambda s: s["global_step"])


def _read_state(path: Path, folder: Path) -> dict[str, Any]:
    refuse_outside_link(path, folder)
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))  # NaN and Infinity parse (to float), as the Trainer writes them
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise RunFormatError(f"{path}: not valid JSON ({err}); restore the file or delete that checkpoint folder") from err
    if not isinstance(state, dict) or not isinstance(state.get("log_history", []), list):
        raise RunFormatError(f"{path}: expected an object with a `log_history` list, as transformers' Trainer writes")
    for index, record in enumerate(state.get("log_history", [])):
        if not isinstance(record, dict):
            raise RunFormatError(
                f"{path}: log_history[{index}] is {type(record).__name__} {record!r:.40}, expected an object of logged values; "
                "restore the file or delete that record"
            )
    state["global_step"] = _step_field(state, "global_step", path, default=0)
    for field in ("max_steps", "seed"):
        if state.get(field) is not None:
            state[field] = _step_field(state, field, path, default=0)
    return state


def _step_field(state: dict[str, Any], field: str, path: Path, *, default: int) -> int:
    """`state[field]` as a non-negative integer (an integral float is accepted); RunFormatError naming it otherwise."""
    value = state.get(field, default)
    if value is None:
        return default
    integral = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not integral or not 0 <= value <= _MAX_STEP:
        raise RunFormatError(
            f"{path}: field {field!r} is {value!r}, expected an integer from 0 to {_MAX_STEP:.0e}; restore the file "
            "from the training run (transformers' Trainer writes the step count there)"
        )
    return int(value)


def trainer_kind(history: list[dict[str, Any]]) -> str:
    """Which trainer wrote a log history, from the keys it logged: "dpo", "grpo", "rloo", "ppo" or "trl"."""
    keys = {k for record in history for k in record}
    if "rewards/margins" in keys:
        return "dpo"
    if "objective/rlhf_reward" in keys:
        return "ppo"
    if "reward_std" in keys or "clip_ratio/region_mean" in keys:
        return "grpo"
    return "trl"


def metric_records(history: list[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    """trainer_state.json's log history as our metric records: {"stage", "step", "time", <metric>: value}.

    Keys TRL shares with us are renamed through TRL_TO_OURS; the others keep TRL's name. Records without an
    integer step are left out; "time" is the summed `step_time` where TRL logs it (seconds), else null.
    NaN and infinite values stay floats here (`nonfinite_events` lists them; the metrics file stores them
    as null, which reads back as NaN).
    """
    out, elapsed = [], 0.0
    for record in history:
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        if _is_number(record.get("step_time")) and math.isfinite(record["step_time"]):
            elapsed += float(record["step_time"])
        metrics = {
            TRL_TO_OURS.get(k, k): float(v) if isinstance(v, float) else v for k, v in record.items() if k != "step" and _is_number(v)
        }
        out.append({"stage": stage, "step": step, "time": elapsed if "step_time" in record else None, **metrics})
    return out


def nonfinite_events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A "nonfinite_metric" event for each metric record holding NaN or an infinity: {"event", "stage", "step", "time",
    "what", "keys", "values"} (values as strings: "nan", "inf", "-inf"), so the report shows where a run diverged."""
    events = []
    for record in records:
        bad = {k: v for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
        if bad:
            what = ", ".join(f"{k} = {bad[k]}" for k in sorted(bad))
            event = {"event": "nonfinite_metric", "stage": record["stage"], "step": record["step"], "time": record["time"]}
            events.append(event | {"what": what, "keys": sorted(bad), "values": [str(bad[k]) for k in sorted(bad)]})
    return events


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = [
    "TRAINER_STATE",
    "is_trl_output",
    "metric_records",
    "nonfinite_events",
    "read_trainer_state",
    "refuse_outside_link",
    "trainer_kind",
    "trl_checkpoints",
]
