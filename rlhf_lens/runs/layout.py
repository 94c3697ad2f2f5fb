"""The run-directory layout: the only place that knows file and folder names.

```
<run>/
  run.json
  data/{corpus,sft,prompts,feedback}.jsonl
  checkpoints/<stage>/<tag>/        tag = step-000050 | final
    config.json, model.safetensors, tokenizer files, value/, state.safetensors, state.json,
    meta.json (written last: a folder without it is incomplete)
  logs/metrics.jsonl
  logs/rollouts/<stage>/step-000050.parquet
  logs/rollouts/<stage>/eval/step-000050.parquet
  analyses/<key>.parquet + analyses/<key>.json, analyses/<key>/
  report.html
```
Names that become folder or file names (stages, tags, analysis keys) must match
`NAME_PATTERN`: no path separators, and no leading dot, because names starting
with a dot are reserved for temporary folders that readers ignore.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RUN_JSON = "run.json"
DATA_DIR = "data"
DATA_KINDS: tuple[str, ...] = ("corpus", "sft", "prompts", "feedback")
CHECKPOINTS_DIR = "checkpoints"
FINAL_TAG = "final"
META_JSON = "meta.json"
MODEL_CONFIG_JSON = "config.json"
VALUE_DIR = "value"
MODEL_SAFETENSORS = "model.safetensors"
MODEL_SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer_config.json", "tokenizer.json")
STATE_SAFETENSORS = "state.safetensors"
STATE_JSON = "state.json"
LOGS_DIR = "logs"
METRICS_JSONL = "metrics.jsonl"
ROLLOUTS_DIR = "rollouts"
EVAL_ROLLOUTS_DIR = "eval"
ANALYSES_DIR = "analyses"
REPORT_HTML = "report.html"

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
_STEP_TAG_RE = re.compile(r"^step-(\d{6,})$")


def validate_name(what: str, name: str) -> str:
    """Return `name` if it is usable as a folder/file name in a run, else raise ValueError.

    `what` says what the name is for ("stage name", "checkpoint tag", ...).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"{what} {name!r} is not allowed: use letters, digits, '_', '-', '.', at most 128 characters, not starting with '.' or '-'"
        )
    return name


def checkpoint_tag(step: int) -> str:
    """The tag of the checkpoint at optimizer step `step`: 50 -> "step-000050"."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return f"step-{step:06d}"


def tag_step(tag: str) -> int | None:
    """The step encoded in a "step-NNNNNN" tag, or None for other tags such as "final"."""
    match = _STEP_TAG_RE.match(tag)
    return int(match.group(1)) if match else None


def run_json_path(run_dir: str | os.PathLike[str]) -> Path:
    """<run>/run.json"""
    return Path(run_dir) / RUN_JSON


def data_dir(run_dir: str | os.PathLike[str]) -> Path:
    """<run>/data"""
    return Path(run_dir) / DATA_DIR


def data_file_name(kind: str) -> str:
    """ "feedback" -> "feedback.jsonl"; raises ValueError for an unknown kind."""
    if kind not in DATA_KINDS:
        raise ValueError(f"data kind must be one of {list(DATA_KINDS)}, got {kind!r}")
    return f"{kind}.jsonl"


def data_path(run_dir: str | os.PathLike[str], kind: str) -> Path:
    """<run>/data/<kind>.jsonl"""
    return data_dir(run_dir) / data_file_name(kind)


def checkpoints_dir(run_dir: str | os.PathLike[str], stage: str) -> Path:
    """<run>/checkpoints/<stage>"""
    return Path(run_dir) / CHECKPOINTS_DIR / validate_name("stage name", stage)


def checkpoint_dir(run_dir: str | os.PathLike[str], stage: str, tag: str) -> Path:
    """<run>/checkpoints/<stage>/<tag>"""
    return checkpoints_dir(run_dir, stage) / validate_name("checkpoint tag", tag)


def temp_checkpoint_dir(run_dir: str | os.PathLike[str], stage: str, tag: str, pid: int) -> Path:
    """<run>/checkpoints/<stage>/.<tag>.tmp-<pid>: where a checkpoint is written before it is renamed."""
    return checkpoints_dir(run_dir, stage) / f".{validate_name('checkpoint tag', tag)}.tmp-{pid}"


def old_checkpoint_dir(run_dir: str | os.PathLike[str], stage: str, tag: str, pid: int) -> Path:
    """<run>/checkpoints/<stage>/.<tag>.old-<pid>: the previous checkpoint while a new one is swapped in."""
    return checkpoints_dir(run_dir, stage) / f".{validate_name('checkpoint tag', tag)}.old-{pid}"


def parse_hidden_checkpoint_dir(name: str) -> tuple[str, str] | None:
    """ ".final.old-123" -> ("final", "old"); None for names that are not writer leftovers."""
    match = re.match(r"^\.(.+)\.(tmp|old)-\d+$", name)
    return (match.group(1), match.group(2)) if match else None


def meta_path(checkpoint: str | os.PathLike[str]) -> Path:
    """<checkpoint>/meta.json"""
    return Path(checkpoint) / META_JSON


def model_config_path(folder: str | os.PathLike[str]) -> Path:
    """<folder>/config.json: the HF config of a model folder (a checkpoint, its value/ model, or a local model)."""
    return Path(folder) / MODEL_CONFIG_JSON


def value_dir(checkpoint: str | os.PathLike[str]) -> Path:
    """<checkpoint>/value: the PPO value model, a plain HF folder."""
    return Path(checkpoint) / VALUE_DIR


def state_paths(checkpoint: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(<checkpoint>/state.safetensors, <checkpoint>/state.json)"""
    return Path(checkpoint) / STATE_SAFETENSORS, Path(checkpoint) / STATE_JSON


def logs_dir(run_dir: str | os.PathLike[str]) -> Path:
    """<run>/logs"""
    return Path(run_dir) / LOGS_DIR


def metrics_path(run_dir: str | os.PathLike[str]) -> Path:
    """<run>/logs/metrics.jsonl"""
    return logs_dir(run_dir) / METRICS_JSONL


def rollouts_root(run_dir: str | os.PathLike[str]) -> Path:
    """<run>/logs/rollouts"""
    return logs_dir(run_dir) / ROLLOUTS_DIR


def rollouts_dir(run_dir: str | os.PathLike[str], stage: str) -> Path:
    """<run>/logs/rollouts/<stage>"""
    return rollouts_root(run_dir) / validate_name("stage name", stage)


def rollout_shard_path(run_dir: str | os.PathLike[str], stage: str, step: int) -> Path:
    """<run>/logs/rollouts/<stage>/step-000050.parquet"""
    return rollouts_dir(run_dir, stage) / f"{checkpoint_tag(step)}.parquet"


def eval_rollouts_dir(run_dir: str | os.PathLike[str], stage: str) -> Path:
    """<run>/logs/rollouts/<stage>/eval: the evaluation samples of a policy stage (same prompts and seeds each time)"""
    return rollouts_dir(run_dir, stage) / EVAL_ROLLOUTS_DIR


def eval_rollout_shard_path(run_dir: str | os.PathLike[str], stage: str, step: int) -> Path:
    """<run>/logs/rollouts/<stage>/eval/step-000050.parquet (step 0: the starting policy)"""
    return eval_rollouts_dir(run_dir, stage) / f"{checkpoint_tag(step)}.parquet"


def analyses_dir(run_dir: str | os.PathLike[str]) -> Path:
    """<run>/analyses"""
    return Path(run_dir) / ANALYSES_DIR


def cache_entry_paths(cache_dir: str | os.PathLike[str], key: str) -> tuple[Path, Path]:
    """(<cache>/<key>.parquet, <cache>/<key>.json): one cached analysis result (the cache is <run>/analyses unless
    the run is read-only or another folder was chosen)."""
    base = Path(cache_dir) / validate_name("analysis key", key)
    return base.with_name(f"{key}.parquet"), base.with_name(f"{key}.json")


def cache_entry_dir(cache_dir: str | os.PathLike[str], key: str) -> Path:
    """<cache>/<key>/: bulky intermediates of one analysis."""
    return Path(cache_dir) / validate_name("analysis key", key)


def report_path(run_dir: str | os.PathLike[str]) -> Path:
    """<run>/report.html"""
    return Path(run_dir) / REPORT_HTML


def analysis_key(name: str, params: dict[str, Any], input_fingerprints: Iterable[str]) -> str:
    """Cache key of an analysis: `name` + "-" + first 12 hex digits of sha256(canonical JSON).

    The canonical JSON covers `params` (the stage, version and settings) and the fingerprints of every
    input the analysis read (`Run.fingerprints`), so a change in either gives a new key. `params` must be
    JSON-serialisable.
    """
    validate_name("analysis name", name)
    try:
        canonical = json.dumps(
            {"params": params, "inputs": list(input_fingerprints)},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"analysis_key({name!r}): params must be JSON-serialisable (str keys; numbers, "
            f"strings, bools, None, lists, dicts; finite floats): {err}"
        ) from err
    return f"{name}-{hashlib.sha256(canonical.encode('ascii')).hexdigest()[:12]}"
