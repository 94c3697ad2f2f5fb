"""Write a TRL output folder's run-directory view: what `open_run` opens for a TRL folder.

```
<folder>/rlhf-lens/
  .rlhf-lens-view.json                     the ledger: every entry below that rlhf-lens made (view_ledger.py)
  run.json                                 task, the trainer, the reference policy and prompts chosen
  data/prompts.jsonl                       only when prompts were given (split "eval" unless they say)
  checkpoints/<trainer>/step-00000N/       links to checkpoint-N's safetensors, JSON and text files,
  checkpoints/<trainer>/final/             and the top-level model; meta.json written by the adapter
  logs/metrics.jsonl                       trainer_state.json's log history, keys mapped by TRL_TO_OURS
  analyses/, report.html                   what the analyses and the report write, as for any run
```

Only `*.safetensors`, `*.json`, `*.txt`, `*.model` and `*.jinja` files are linked (never a pickle, not even
for `from_pretrained`). The view is written only inside a folder rlhf-lens made and deletes only what its
ledger lists; no link is followed (`rlhf_lens.runs.safe_fs`). When the TRL folder cannot be written, the view
lives in the user's cache folder instead (`view_location`).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .cache_dirs import is_writable, user_cache_dir
from .env import collect_env
from .errors import RunFormatError
from .hashing import sha256_bytes
from .jsonl import dump_jsonl_line
from .jsonsafe import to_jsonable
from .layout import (
    CHECKPOINTS_DIR,
    DATA_DIR,
    FINAL_TAG,
    LOGS_DIR,
    META_JSON,
    METRICS_JSONL,
    MODEL_CONFIG_JSON,
    RUN_JSON,
    checkpoint_tag,
)
from .manifest import build_manifest, validate_manifest
from .reader import read_model_config
from .safe_fs import ensure_dir, read_bytes, symlink, write_bytes
from .trl import (
    TRAINER_STATE,
    metric_records,
    nonfinite_events,
    read_trainer_state,
    refuse_outside_link,
    trainer_kind,
    trl_checkpoints,
)
from .view_ledger import Ledger, check_view, link_kind, remove_stale, remove_temp_files, write_ledger
from .weights import safetensors_weight_files

VIEW_DIR = "rlhf-lens"
"""The run-directory view inside a TRL output folder."""
LINKED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja")
"""The only files a view links to: weights, configs, tokenizer files. Never a pickle."""
_TASK = "external"
"""The task of a TRL run unless one is named: no built-in prompts, labels or gold reward."""


def view_location(folder: str | os.PathLike[str]) -> tuple[Path, str]:
    """(the folder a TRL folder's view is written in, the view's name there): `<folder>/rlhf-lens` when `folder`
    can be written, else `<user cache>/trl-views/<folder name>-<hash of its path>`."""
    folder = Path(folder).absolute()
    if is_writable(folder):
        return folder, VIEW_DIR
    return user_cache_dir() / "trl-views", f"{folder.name}-{sha256_bytes(str(folder).encode('utf-8'))[:12]}"


def trl_view(
    folder: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str] | None = None,
    prompts: str | os.PathLike[str] | None = None,
    task: str | None = None,
) -> Path:
    """Write (or refresh) the run-directory view of TRL output `folder` and return its path.

    `reference`: the HF folder of the policy TRL started from (the policy diff compares against it);
    `prompts`: a JSONL file of {"prompt": ...} records the analyses sample (the split is "eval" unless a record
    says otherwise); `task`: a built-in task the run trained on (for its gold reward), else "external".
    Each left as None keeps what an earlier call recorded in the view. The analysis cache and report of the view
    are kept.
    """
    folder = Path(folder).absolute()
    state = read_trainer_state(folder)
    history = state.get("log_history", [])
    stage = trainer_kind(history)
    root, name = view_location(folder)
    ledger = check_view(root, name)  # before anything is read from or written to the view
    view = root / name
    previous = _previous_choices(view) if ledger else {}
    reference = Path(reference).absolute() if reference is not None else previous.get("reference")
    prompts = Path(prompts).absolute() if prompts is not None else previous.get("prompts")
    task = task or previous.get("task") or _TASK

    sources = _sources(folder, state)
    if reference is not None:
        _check_reference(Path(reference), sources[-1][2])
    records = metric_records(history, stage)
    files: dict[str, bytes] = {}  # view-relative path -> bytes, the view's own files besides the links
    checkpoints = {tag: _checkpoint_plan(folder, stage, step, tag, source, records) for step, tag, source in sources}
    for tag, (_, meta) in checkpoints.items():
        files[f"{CHECKPOINTS_DIR}/{stage}/{tag}/{META_JSON}"] = _json_bytes(meta)
    manifest = _manifest(folder, state, stage, sources, reference, prompts, task)
    if prompts is not None:
        lines = b"".join(dump_jsonl_line(r, Path(prompts)) for r in _prompt_records(Path(prompts)))
        files[f"{DATA_DIR}/prompts.jsonl"] = lines
        manifest["data"]["prompts.jsonl"] = {"path": "data/prompts.jsonl", "sha256": sha256_bytes(lines), "records": lines.count(b"\n")}
    log = to_jsonable(records + nonfinite_events(records), where=f"{TRAINER_STATE} log history", nonfinite="null")
    files[f"{LOGS_DIR}/{METRICS_JSONL}"] = b"".join(dump_jsonl_line(r, view / LOGS_DIR / METRICS_JSONL) for r in log)
    validate_manifest(manifest, source=f"{view / RUN_JSON} (about to be written)")
    files[RUN_JSON] = _json_bytes(manifest)

    planned = _planned_entries(stage, checkpoints, files)
    changed = {f"{CHECKPOINTS_DIR}/{stage}/{tag}" for tag in checkpoints if _on_disk_meta(root, name, stage, tag) != checkpoints[tag][1]}
    remove_temp_files(root, name)
    remove_stale(root, name, ledger, keep={k: v for k, v in planned.items() if not any(k == c or k.startswith(c + "/") for c in changed)})
    write_ledger(root, name, ledger | planned)  # first: whatever is made below is recorded, even if this is killed
    _make_entries(root, name, planned, files)
    write_ledger(root, name, planned)
    return view


def _sources(folder: Path, state: dict[str, Any]) -> list[tuple[int, str, Path]]:
    """(step, tag, source folder) of each model the view shows: the checkpoint-N folders, then the final model."""
    sources = [(step, checkpoint_tag(step), path) for step, path in trl_checkpoints(folder) if (path / MODEL_CONFIG_JSON).is_file()]
    if (folder / MODEL_CONFIG_JSON).is_file():
        final_step = state.get("max_steps") or state["global_step"]
        sources.append((max([final_step] + [s[0] for s in sources]), FINAL_TAG, folder))
    if not sources:
        raise FileNotFoundError(
            f"{folder} holds no model: neither checkpoint-N/ folders with {MODEL_CONFIG_JSON} nor a saved model at the top"
        )
    for _, _, source in sources:
        read_model_config(source)  # a config.json that is not JSON is named here, before anything is written
    return sources


def _linked_files(source: Path, folder: Path) -> list[Path]:
    """The files of `source` a view checkpoint links to (its weights already vetted); links outside `folder` refused."""
    out = []
    for path in sorted(source.iterdir()):
        if path.suffix in LINKED_SUFFIXES and path.name != TRAINER_STATE and path.is_file():
            refuse_outside_link(path, folder)
            out.append(path)
    return out


def _checkpoint_plan(
    folder: Path, stage: str, step: int, tag: str, source: Path, records: list[dict[str, Any]]
) -> tuple[list[Path], dict[str, Any]]:
    """(files to link, meta.json) of one view checkpoint of TRL folder `folder`; `records` are the stage's metric records."""
    logged = [r for r in records if r["step"] <= step]
    metrics = {k: v for k, v in logged[-1].items() if k not in ("stage", "step", "time")} if logged else {}
    weights = safetensors_weight_files(source)  # vetted before anything links to them
    linked = _linked_files(source, folder)
    meta = {
        "stage": stage,
        "kind": "policy",
        "step": step,
        "tag": tag,
        "created": _iso_mtime(weights[0]),
        "metrics": to_jsonable(metrics, where=f"{source / TRAINER_STATE} metrics", nonfinite="null"),
        "source": str(source),
    }
    return linked, meta


def _planned_entries(stage: str, checkpoints: dict[str, tuple[list[Path], dict[str, Any]]], files: dict[str, bytes]) -> Ledger:
    """Every entry of the view as the ledger records it: folders, links (to their absolute targets) and files."""
    planned: Ledger = {}
    for rel in list(files) + [f"{CHECKPOINTS_DIR}/{stage}/{tag}/{p.name}" for tag, (linked, _) in checkpoints.items() for p in linked]:
        for parent in PurePosixPath(rel).parents:
            if str(parent) != ".":
                planned[str(parent)] = "dir"
    for rel in files:
        planned[rel] = "file"
    for tag, (linked, _) in checkpoints.items():
        for path in linked:
            planned[f"{CHECKPOINTS_DIR}/{stage}/{tag}/{path.name}"] = link_kind(path.absolute())
    return planned


def _make_entries(root: Path, name: str, planned: Ledger, files: dict[str, bytes]) -> None:
    """Create the planned folders and links that are missing, and write every file (meta.json of a checkpoint
    after its links, so a killed refresh leaves no complete-looking checkpoint without its weights)."""
    view = PurePosixPath(name)
    for rel, kind in sorted(planned.items()):
        if kind == "dir":
            ensure_dir(root, view / rel)
        elif kind.startswith("link:") and not (root / name / rel).is_symlink():
            symlink(root, view / rel, kind.removeprefix("link:"))
    for rel in sorted(files, key=lambda r: r == RUN_JSON):  # run.json last
        if _read_view_file(root, view / rel) != files[rel]:  # unchanged files keep their times
            write_bytes(root, view / rel, files[rel])


def _read_view_file(root: Path, relative: PurePosixPath) -> bytes | None:
    """The bytes of a file of the view (read without following any link), or None."""
    try:
        return read_bytes(root, relative)
    except (OSError, ValueError):
        return None


def _on_disk_meta(root: Path, name: str, stage: str, tag: str) -> dict[str, Any] | None:
    """The meta.json a view checkpoint has now, or None."""
    raw = _read_view_file(root, PurePosixPath(name) / CHECKPOINTS_DIR / stage / tag / META_JSON)
    try:
        return json.loads(raw.decode("utf-8")) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        return None


def _manifest(
    folder: Path, state: dict[str, Any], stage: str, sources: list, reference: Path | None, prompts: Path | None, task: str
) -> dict[str, Any]:
    config = {
        "source": "trl",
        "trl_folder": str(folder),
        "trainer": stage,
        "reference": str(reference) if reference is not None else None,
        "prompts": str(prompts) if prompts is not None else None,
        "task": task,
        "trainer_state": to_jsonable(
            {k: v for k, v in state.items() if k != "log_history" and isinstance(v, int | float | str | bool | None)},
            where=f"{TRAINER_STATE}",
            nonfinite="null",
        ),
        "stages": [{"name": stage, "kind": "policy"}],
    }
    manifest = build_manifest(
        name=folder.name,
        task=task,
        seed=int(state.get("seed") or 0),
        config=config,
        env=_env(),
        created=_iso_mtime(sources[-1][2] / MODEL_CONFIG_JSON),
    )
    manifest["stages"] = [
        {"name": stage, "kind": "policy", "status": "done", "checkpoints": [tag for _, tag, _ in sources], "init_from": None}
    ]
    if reference is not None:
        manifest["results"] = {stage: {"policy_from": str(reference)}}
    return manifest


def _prompt_records(path: Path) -> list[dict[str, Any]]:
    """The records of a prompts JSONL file as data/prompts.jsonl records: {"id", "split", "prompt"}."""
    records = []
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise RunFormatError(f"{path}, line {line}: not UTF-8 text ({err.reason}); re-save the file as UTF-8") from err
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as err:
            raise RunFormatError(f"{path}, line {number}: not valid JSON ({err}); write one JSON object per line") from err
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise RunFormatError(
                f'{path}, line {number}: expected an object with a string "prompt" field, e.g. {{"prompt": "The food was"}}'
            )
        split = record.get("split", "eval")
        records.append({"id": len(records), "split": split if split in ("train", "eval") else "eval", "prompt": record["prompt"]})
    if not records:
        raise RunFormatError(f'{path} holds no prompts; write one JSON object per line with a "prompt" field')
    return records


def _check_reference(reference: Path, policy_folder: Path) -> None:
    safetensors_weight_files(reference)
    ours, theirs = read_model_config(reference).get("vocab_size"), read_model_config(policy_folder).get("vocab_size")
    if ours != theirs:
        raise ValueError(
            f"reference {reference} has a vocabulary of {ours} tokens but the TRL policy has {theirs}: they do not share a tokenizer"
        )


def _previous_choices(view: Path) -> dict[str, Any]:
    """The reference, prompts and task an earlier call recorded in the view's run.json (checked by `check_view`)."""
    path = view / RUN_JSON
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    except (ValueError, UnicodeDecodeError, AttributeError):
        return {}  # a damaged view run.json is rewritten below
    return {
        "reference": Path(config["reference"]) if config.get("reference") else None,
        "prompts": Path(config["prompts"]) if config.get("prompts") else None,
        "task": config.get("task"),
    }


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _iso_mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _env() -> dict[str, Any]:
    env = collect_env()
    env["device"] = "unknown (trained by TRL)"
    env["git_commit"] = None  # the commit of rlhf-lens's own checkout says nothing about the TRL run
    return env


__all__ = ["LINKED_SUFFIXES", "VIEW_DIR", "trl_view", "view_location"]
