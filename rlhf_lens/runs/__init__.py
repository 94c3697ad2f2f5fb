"""The run-directory format (version 1): THE contract between the trainer and the analyses.

The trainer writes a run with `RunWriter`; analyses read it with `Run`. Only this
package knows file names and layouts (see `rlhf_lens.runs.layout`).
"""

from .adapters import open_run
from .atomic import CRASH_ENV, atomic_write_bytes, atomic_write_json, maybe_crash_after
from .errors import RunFormatError, RunLookupError
from .hashing import sha256_file
from .info import CheckpointInfo, StageInfo
from .init_from import parse_init_from, resolve_init_from
from .jsonl import append_jsonl, read_jsonl, rewrite_jsonl
from .keys import ALL_METRIC_KEYS, METRIC_KEYS, TRL_TO_OURS
from .layout import (
    DATA_KINDS,
    FINAL_TAG,
    analysis_key,
    checkpoint_dir,
    checkpoint_tag,
    data_path,
    metrics_path,
    report_path,
    rollout_shard_path,
    run_json_path,
    tag_step,
    value_dir,
)
from .manifest import FORMAT, FORMAT_VERSION, STAGE_KINDS, STAGE_STATUSES, load_schema, validate_manifest
from .reader import Run, has_training_state, load_hf_folder, read_checkpoint_meta, read_model_config
from .state import load_state, save_state
from .writer import RunWriter

__all__ = [
    "ALL_METRIC_KEYS",
    "CRASH_ENV",
    "DATA_KINDS",
    "FINAL_TAG",
    "FORMAT",
    "FORMAT_VERSION",
    "METRIC_KEYS",
    "STAGE_KINDS",
    "STAGE_STATUSES",
    "TRL_TO_OURS",
    "CheckpointInfo",
    "Run",
    "load_hf_folder",
    "RunFormatError",
    "RunLookupError",
    "RunWriter",
    "StageInfo",
    "analysis_key",
    "append_jsonl",
    "atomic_write_bytes",
    "atomic_write_json",
    "checkpoint_dir",
    "checkpoint_tag",
    "has_training_state",
    "data_path",
    "load_schema",
    "load_state",
    "maybe_crash_after",
    "metrics_path",
    "open_run",
    "parse_init_from",
    "read_checkpoint_meta",
    "read_jsonl",
    "read_model_config",
    "report_path",
    "resolve_init_from",
    "rewrite_jsonl",
    "rollout_shard_path",
    "run_json_path",
    "save_state",
    "sha256_file",
    "tag_step",
    "validate_manifest",
    "value_dir",
]
