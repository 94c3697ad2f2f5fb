"""run.json: build it, check it against the JSON Schema shipped here, read and write it."""

from __future__ import annotations

import copy
import functools
import json
import os
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .env import package_version
from .errors import RunFormatError
from .jsonsafe import to_jsonable
from .layout import run_json_path

FORMAT = "rlhf-lens-run"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
STAGE_KINDS: tuple[str, ...] = ("base", "sft", "reward", "policy")
STAGE_STATUSES: tuple[str, ...] = ("pending", "running", "done", "failed")

_MAX_REPORTED_ERRORS = 8


@functools.cache
def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of run.json, format_version 1."""
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> Any:
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def utc_now() -> str:
    """Current time as ISO 8601 UTC, e.g. "2026-11-28T16:30:00.123456Z"."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _field_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error: Any) -> str:
    where = _field_path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        names = ", ".join(repr(k if where == "(top level)" else f"{where}.{k}") for k in missing)
        return f"missing required field {names}"
    if error.validator == "additionalProperties":
        return f"at {where}: {error.message} (a typo, or a field this format_version does not define)"
    return f"field {where}: {error.message}"


def check_format_version(manifest: Any, source: str) -> None:
    """Raise RunFormatError unless `manifest` is an rlhf-lens run of a format_version we read."""
    if not isinstance(manifest, dict):
        raise RunFormatError(f"{source}: expected a JSON object, found {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise RunFormatError(f'{source}: not an rlhf-lens run manifest: "format" is {manifest.get("format")!r}, expected {FORMAT!r}')
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
        supported = ", ".join(map(str, SUPPORTED_FORMAT_VERSIONS))
        advice = (
            "It was written by a newer rlhf-lens: upgrade (pip install -U rlhf-lens) to read it."
            if isinstance(version, int) and not isinstance(version, bool) and version > max(SUPPORTED_FORMAT_VERSIONS)
            else "The file is damaged or was not written by rlhf-lens; upgrading rlhf-lens may help."
        )
        raise RunFormatError(
            f"{source}: found format_version {version!r}, but rlhf-lens {package_version('rlhf-lens')} "
            f"reads format_version {supported} only. {advice}"
        )


def validate_manifest(manifest: Any, source: str = "run.json") -> None:
    """Raise RunFormatError naming each offending field unless `manifest` matches the schema."""
    check_format_version(manifest, source)
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = [f"  - {_describe(e)}" for e in errors[:_MAX_REPORTED_ERRORS]]
        if len(errors) > _MAX_REPORTED_ERRORS:
            lines.append(f"  - ... and {len(errors) - _MAX_REPORTED_ERRORS} more")
        raise RunFormatError(
            f"{source} is not a valid rlhf-lens run manifest (format_version {FORMAT_VERSION}):\n"
            + "\n".join(lines)
            + "\nFix these fields (the schema is rlhf_lens/runs/schema.json), or write the run again."
        )


def build_manifest(
    *, name: str, task: str, seed: int, config: dict[str, Any], env: dict[str, Any], created: str | None = None
) -> dict[str, Any]:
    """A new, valid manifest with no stages, no data and no results."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": created or utc_now(),
        "task": task,
        "seed": seed,
        "config": to_jsonable(config, where="config", nonfinite="error"),
        "stages": [],
        "data": {},
        "env": env,
        "results": {},
    }
    validate_manifest(manifest, source="new run.json")
    return manifest


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate <run>/run.json; FileNotFoundError or RunFormatError with the path."""
    path = run_json_path(run_dir)
    if not path.is_file():
        where = Path(run_dir)
        hint = "the folder does not exist" if not where.exists() else "the folder has no run.json"
        raise FileNotFoundError(
            f"{path} not found ({hint}): is {where} a run directory? Runs are written by `rlhf-lens train` (rlhf_lens.runs.RunWriter); "
            "a TRL output folder (checkpoint-N/ with trainer_state.json) is read through `rlhf_lens.runs.open_run`."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunFormatError(f"{path}, line {err.lineno} column {err.colno}: invalid JSON ({err.msg})") from err
    except UnicodeDecodeError as err:
        raise RunFormatError(f"{path}: not UTF-8 text ({err})") from err
    validate_manifest(manifest, source=str(path))
    return manifest


def write_manifest(run_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Validate `manifest`, then replace <run>/run.json with it atomically (a link there is refused, not followed)."""
    path = run_json_path(run_dir)
    validate_manifest(manifest, source=f"{path} (about to be written)")
    atomic_write_json(path, copy.deepcopy(manifest))
