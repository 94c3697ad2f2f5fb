"""RunWriter: the only code that writes a run directory (used by the trainer).

Every write is atomic or an fsynced append, and passes through the
fault-injection point `maybe_crash_after`. run.json is written first and
rewritten (validated against the schema) on every change. A checkpoint is
written into a hidden temporary folder, meta.json last, and only then renamed
into place, so a crash never leaves a half checkpoint under a real tag and never
destroys the previous complete one. One process writes a run at a time.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_bytes, atomic_write_json, fsync_dir, fsync_file, maybe_crash_after
from .env import collect_env
from .hashing import sha256_bytes
from .jsonl import append_jsonl, dump_jsonl_line, read_jsonl, rewrite_jsonl
from .jsonsafe import to_jsonable
from .layout import (
    CHECKPOINTS_DIR,
    DATA_KINDS,
    LOGS_DIR,
    checkpoint_dir,
    data_file_name,
    data_path,
    eval_rollout_shard_path,
    eval_rollouts_dir,
    logs_dir,
    meta_path,
    metrics_path,
    old_checkpoint_dir,
    parse_hidden_checkpoint_dir,
    rollout_shard_path,
    rollouts_dir,
    run_json_path,
    tag_step,
    temp_checkpoint_dir,
    validate_name,
    value_dir,
)
from .manifest import STAGE_KINDS, STAGE_STATUSES, build_manifest, read_manifest, utc_now, write_manifest
from .safe_fs import DiskFullError, ensure_dir, is_disk_full, refuse_links, remove, rename
from .state import save_state
from .weights import safetensors_weight_files

if TYPE_CHECKING:
    import pandas as pd

_META_CORE_KEYS = ("stage", "kind", "step", "tag", "created", "metrics")
_RECORD_CORE_KEYS = ("stage", "step", "time", "event")


class RunWriter:
    """Writes one run directory. Make one with `RunWriter.create(...)` or `RunWriter.open(path)`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self._path = path
        self._manifest = manifest

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str,
        task: str,
        seed: int,
        config: dict[str, Any],
        overwrite: bool = False,
    ) -> RunWriter:
        """Start a new run at `path`, writing run.json first.

        An existing non-empty folder is refused unless `overwrite=True`; even then
        only a folder holding a run.json (an earlier run) is deleted.
        """
        path = Path(path).absolute()
        if path.is_symlink():
            raise FileExistsError(
                f"cannot create a run at {path}: it is a symbolic link; rlhf-lens never writes through one. Pick another folder"
            )
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"cannot create a run at {path}: it is a file")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{path} already exists and is not empty; pick a new run folder, resume it with "
                    "RunWriter.open(path), or pass overwrite=True to delete the old run"
                )
            if not run_json_path(path).is_file():
                raise FileExistsError(
                    f"{path} is not empty and has no run.json, so it is not a run; refusing to delete it "
                    "even with overwrite=True. Pick another folder."
                )
            remove(path.parent, path.name)  # a run (it has run.json), and not a link (checked above)
        manifest = build_manifest(name=name, task=task, seed=seed, config=config, env=collect_env())
        path.mkdir(parents=True, exist_ok=True)
        write_manifest(path, manifest)
        for sub in (data_path(path, DATA_KINDS[0]).parent, path / CHECKPOINTS_DIR, logs_dir(path)):
            sub.mkdir(exist_ok=True)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunWriter:
        """Open an existing run to continue writing it (e.g. to resume training).

        Leftovers of a checkpoint save that was killed are tidied: a previous
        checkpoint caught mid-swap is put back, temporary folders are removed.
        """
        path = Path(path).absolute()
        writer = cls(path, read_manifest(path))
        for folder in (CHECKPOINTS_DIR, LOGS_DIR):  # resuming replaces and deletes there: never through a link
            refuse_links(path, folder)
        writer._recover_checkpoint_folders()
        return writer

    @property
    def path(self) -> Path:
        """The run folder."""
        return self._path

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of run.json as last written."""
        return copy.deepcopy(self._manifest)

    # ------------------------------------------------------------------ manifest

    def _commit(self, manifest: dict[str, Any]) -> None:
        write_manifest(self._path, manifest)
        self._manifest = manifest

    def _stage_entry(self, manifest: dict[str, Any], name: str) -> dict[str, Any]:
        for stage in manifest["stages"]:
            if stage["name"] == name:
                return stage
        known = [s["name"] for s in manifest["stages"]] or "none yet"
        raise ValueError(f"{self._path}: no stage {name!r} in run.json (stages: {known}); call add_stage first")

    def has_stage(self, name: str) -> bool:
        """Whether run.json declares a stage called `name`."""
        return any(s["name"] == name for s in self._manifest["stages"])

    def add_stage(self, name: str, kind: str, init_from: dict[str, Any] | None = None) -> None:
        """Declare a stage (status "pending"). `init_from` comes from `resolve_init_from(spec)`."""
        validate_name("stage name", name)
        if kind not in STAGE_KINDS:
            raise ValueError(f"stage {name!r}: kind must be one of {list(STAGE_KINDS)}, got {kind!r}")
        if self.has_stage(name):
            raise ValueError(f"{self._path}: stage {name!r} already exists; stage names are unique per run")
        if init_from is not None:
            if not isinstance(init_from, dict) or set(init_from) != {"spec", "path", "sha256"}:
                raise ValueError(
                    f"stage {name!r}: init_from must be None or {{'spec', 'path', 'sha256'}} as returned by "
                    f"rlhf_lens.runs.resolve_init_from(spec), got {init_from!r}"
                )
            init_from = {k: str(v) for k, v in init_from.items()}
        manifest = self.manifest
        manifest["stages"].append({"name": name, "kind": kind, "status": "pending", "checkpoints": [], "init_from": init_from})
        self._commit(manifest)

    def set_stage_status(self, name: str, status: str) -> None:
        """Set a stage's status: "pending", "running", "done" or "failed"."""
        if status not in STAGE_STATUSES:
            raise ValueError(f"stage {name!r}: status must be one of {list(STAGE_STATUSES)}, got {status!r}")
        manifest = self.manifest
        self._stage_entry(manifest, name)["status"] = status
        self._commit(manifest)

    def set_result(self, stage: str, key: str, value: Any) -> None:
        """Record one headline number under run.json's results[stage][key] (NaN/inf become null)."""
        self.update_results(stage, {key: value})

    def update_results(self, stage: str, values: Mapping[str, Any]) -> None:
        """Merge `values` into run.json's results[stage] (NaN/inf become null)."""
        manifest = self.manifest
        self._stage_entry(manifest, stage)
        clean = to_jsonable(dict(values), where=f"results[{stage!r}]", nonfinite="null")
        manifest.setdefault("results", {}).setdefault(stage, {}).update(clean)
        self._commit(manifest)

    # ------------------------------------------------------------------ data

    def write_data(self, kind: str, records: Iterable[Mapping[str, Any]]) -> Path:
        """Write data/<kind>.jsonl atomically and record its sha256 and record count in run.json."""
        file_name = data_file_name(kind)
        path = data_path(self._path, kind)
        lines = [
            dump_jsonl_line(to_jsonable(dict(r), where=f"{file_name} record {i + 1}", nonfinite="error"), path)
            for i, r in enumerate(records)
        ]
        data = b"".join(lines)
        atomic_write_bytes(path, data)
        manifest = self.manifest
        manifest["data"][file_name] = {
            "path": path.relative_to(self._path).as_posix(),
            "sha256": sha256_bytes(data),
            "records": len(lines),
        }
        self._commit(manifest)
        return path

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(
        self,
        stage: str,
        tag: str,
        *,
        model: Any,
        tokenizer: Any = None,
        step: int,
        metrics: Mapping[str, Any],
        state: Any = None,
        value_model: Any = None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save a checkpoint to checkpoints/<stage>/<tag>/ and return that folder.

        Writes, in order: the model (`save_pretrained`, safetensors), the tokenizer,
        value/ (the value model), state.safetensors + state.json, meta.json; all
        into a hidden temporary folder that is then renamed into place (replacing
        an earlier checkpoint with the same tag only once the new one is complete).
        """
        kind = self._stage_entry(self._manifest, stage)["kind"]
        validate_name("checkpoint tag", tag)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"save_checkpoint({stage!r}, {tag!r}): step must be a non-negative int, got {step!r}")
        if tag_step(tag) is not None and tag_step(tag) != step:
            raise ValueError(f"save_checkpoint({stage!r}, {tag!r}): the tag says step {tag_step(tag)}, step={step}")
        extra = to_jsonable(dict(extra_meta or {}), where="extra_meta", nonfinite="null")
        clash = sorted(set(extra) & set(_META_CORE_KEYS))
        if clash:
            raise ValueError(f"save_checkpoint: extra_meta may not set {clash}; they are written by the writer")
        meta = {
            "stage": stage,
            "kind": kind,
            "step": step,
            "tag": tag,
            "created": utc_now(),
            "metrics": to_jsonable(dict(metrics), where="metrics", nonfinite="null"),
            **extra,
        }

        pid = os.getpid()
        tmp = temp_checkpoint_dir(self._path, stage, tag, pid)
        remove(self._path, self._relative(tmp))  # a leftover of this process id, never followed if a link
        ensure_dir(self._path, self._relative(tmp))
        try:
            _save_pretrained(model, tmp)
            safetensors_weight_files(tmp)
            if tokenizer is not None:
                _save_pretrained(tokenizer, tmp)
            if value_model is not None:
                _save_pretrained(value_model, value_dir(tmp))
                safetensors_weight_files(value_dir(tmp))
            if state is not None:
                save_state(tmp, state)
            for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
                fsync_file(f)
            atomic_write_json(meta_path(tmp), meta)  # last: it marks the folder complete
            fsync_dir(tmp)
        except BaseException as err:
            with contextlib.suppress(OSError):
                remove(self._path, self._relative(tmp))
            if is_disk_full(err) and not isinstance(err, DiskFullError):
                raise DiskFullError(checkpoint_dir(self._path, stage, tag), _checkpoint_bytes(model, value_model, state)) from err
            raise
        final = checkpoint_dir(self._path, stage, tag)
        self._swap_into_place(tmp, final, old_checkpoint_dir(self._path, stage, tag, pid))

        manifest = self.manifest
        entry = self._stage_entry(manifest, stage)
        if tag not in entry["checkpoints"]:
            entry["checkpoints"].append(tag)
            self._commit(manifest)
        return final

    def _relative(self, path: Path) -> Path:
        """`path` (inside the run) relative to the run folder: what the link-refusing `safe_fs` calls take."""
        return path.relative_to(self._path)

    def _swap_into_place(self, new: Path, final: Path, old: Path) -> None:
        """Rename the complete folder `new` to `final` (all in one stage folder), moving an existing `final` aside
        first; no link is followed or moved."""
        stage_dir = self._relative(final.parent)
        if final.exists():
            remove(self._path, self._relative(old))
            rename(self._path, stage_dir, final.name, old.name)
            rename(self._path, stage_dir, new.name, final.name)  # a crash between these renames is undone by RunWriter.open
            remove(self._path, self._relative(old))
        else:
            rename(self._path, stage_dir, new.name, final.name)

    def _recover_checkpoint_folders(self) -> None:
        restored, removed = [], []
        root = self._path / CHECKPOINTS_DIR
        stage_dirs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
        for stage_dir in stage_dirs:
            for entry in sorted(stage_dir.iterdir()):
                parsed = parse_hidden_checkpoint_dir(entry.name)
                if parsed is None or not entry.is_dir():
                    continue
                tag, what = parsed
                target = stage_dir / tag
                if what == "old" and not target.exists() and meta_path(entry).is_file():
                    rename(self._path, self._relative(stage_dir), entry.name, tag)  # killed between the two renames of a swap
                    restored.append(f"{stage_dir.name}/{tag}")
                else:
                    remove(self._path, self._relative(entry))
                    removed.append(f"{stage_dir.name}/{entry.name}")
            fsync_dir(stage_dir)
        if restored or removed:
            self.log_event("checkpoint_cleanup", restored=restored, removed=removed)

    # ------------------------------------------------------------------ logs

    def log_metrics(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Append {"stage", "step", "time", **metrics} to logs/metrics.jsonl (NaN/inf become null)."""
        self._stage_entry(self._manifest, stage)
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"log_metrics({stage!r}): step must be an int, got {step!r}")
        clash = sorted(set(metrics) & set(_RECORD_CORE_KEYS))
        if clash:
            raise ValueError(f"log_metrics({stage!r}, {step}): metric names {clash} are reserved")
        clean = to_jsonable(dict(metrics), where=f"metrics at {stage} step {step}", nonfinite="null")
        append_jsonl(metrics_path(self._path), {"stage": stage, "step": step, "time": time.time(), **clean})

    def log_event(self, event: str, **fields: Any) -> None:
        """Append {"event", "time", **fields} to logs/metrics.jsonl (e.g. "nan_skip", "resume")."""
        if not isinstance(event, str) or not event:
            raise ValueError(f"log_event: event must be a non-empty string, got {event!r}")
        if "time" in fields:
            raise ValueError("log_event: 'time' is reserved; it is set by the writer")
        clean = to_jsonable(fields, where=f"event {event!r}", nonfinite="null")
        append_jsonl(metrics_path(self._path), {"event": event, "time": time.time(), **clean})

    def write_rollouts(self, stage: str, step: int, rows: list[dict[str, Any]] | pd.DataFrame) -> Path:
        """Write logs/rollouts/<stage>/step-NNNNNN.parquet atomically and return its path.

        `rows` is a list of dicts or a pandas DataFrame, one row per sample;
        per-token columns hold lists. Columns "stage" and "step" are added when
        missing and must match the arguments when present.
        """
        return self._write_rollout_file(rollout_shard_path(self._path, stage, step), stage, step, rows, "write_rollouts")

    def write_eval_rollouts(self, stage: str, step: int, rows: list[dict[str, Any]] | pd.DataFrame) -> Path:
        """Write the evaluation samples taken at `step` (0: the starting policy) to
        logs/rollouts/<stage>/eval/step-NNNNNN.parquet, with the columns of `write_rollouts`."""
        return self._write_rollout_file(eval_rollout_shard_path(self._path, stage, step), stage, step, rows, "write_eval_rollouts")

    def _write_rollout_file(self, path: Path, stage: str, step: int, rows, caller: str) -> Path:
        import io

        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._stage_entry(self._manifest, stage)
        df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if len(df) == 0:
            raise ValueError(f"{caller}({stage!r}, {step}): no rows to write")
        for column, value in (("step", step), ("stage", stage)):
            if column not in df.columns:
                df.insert(0, column, value)
            elif not (df[column] == value).all():
                raise ValueError(f"{caller}({stage!r}, {step}): column {column!r} has values other than {value!r}")
        try:
            table = pa.Table.from_pandas(df, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            bad = _first_unstorable_column(df)
            raise ValueError(
                f"{caller}({stage!r}, {step}): column {bad!r} cannot be stored in parquet ({err}); "
                "use numbers, strings, lists or dicts (call .tolist() on tensors)"
            ) from err
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return atomic_write_bytes(path, buffer.getvalue())

    def rewind_metrics(self, stage: str, step: int) -> int:
        """Cut the logs back to `stage`'s checkpoint at `step`, for an exact resume.

        Rewrites metrics.jsonl atomically without the metric records of `stage`
        with a step after `step` (other stages and events are kept), deletes that
        stage's rollout shards after `step`, then appends a "resume" event.
        Returns how many metric records were dropped.
        """
        self._stage_entry(self._manifest, stage)
        path = metrics_path(self._path)
        dropped = 0
        torn = 0
        if path.is_file():
            records, torn = read_jsonl(path)

            def after(r: dict[str, Any]) -> bool:
                s = r.get("step")
                return "event" not in r and r.get("stage") == stage and isinstance(s, int) and s > step

            kept = [r for r in records if not after(r)]
            dropped = len(records) - len(kept)
            rewrite_jsonl(path, kept)
        for shard_dir in (rollouts_dir(self._path, stage), eval_rollouts_dir(self._path, stage)):
            if shard_dir.is_dir():
                for shard in sorted(shard_dir.glob("step-*.parquet")):
                    shard_step = tag_step(shard.stem)
                    if shard_step is not None and shard_step > step:
                        remove(self._path, self._relative(shard))
                fsync_dir(shard_dir)
        self.log_event("resume", stage=stage, step=step, dropped_records=dropped, torn_lines=torn)
        return dropped


def _checkpoint_bytes(model: Any, value_model: Any, state: Any) -> int:
    """About the bytes a checkpoint takes: the weights, the value model's, and (with training state) the optimizer's
    two moments per parameter."""

    def weights(m: Any) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters()) if hasattr(m, "parameters") else 0

    total = weights(model) + (weights(value_model) if value_model is not None else 0)
    return total * 3 if state is not None else total


def _save_pretrained(obj: Any, folder: Path) -> None:
    """`obj.save_pretrained(folder)`, then fsync and pass each new file through the crash point."""
    if not callable(getattr(obj, "save_pretrained", None)):
        raise TypeError(f"cannot save {type(obj).__name__} to {folder}: it has no save_pretrained method")
    folder.mkdir(parents=True, exist_ok=True)
    before = {p for p in folder.rglob("*") if p.is_file()}
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(obj.save_pretrained).parameters
    except (TypeError, ValueError):
        params = {}
    if "safe_serialization" in params:  # transformers 4.x; 5.x always writes safetensors
        kwargs["safe_serialization"] = True
    obj.save_pretrained(str(folder), **kwargs)
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p not in before):
        fsync_file(f)
        maybe_crash_after(f)


def _first_unstorable_column(df: pd.DataFrame) -> str:
    import pyarrow as pa

    for column in df.columns:
        try:
            pa.array(df[column], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return str(column)
    return "?"
