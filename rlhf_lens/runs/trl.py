"""Read a TRL output folder as if it were a run: the adapter `open_run` uses.

A TRL trainer (GRPOTrainer, DPOTrainer, RLOOTrainer, ...) writes `checkpoint-N/` HF folders, each with
a `trainer_state.json` holding the log history, and `trainer.save_model(output_dir)` puts the final
model at the top. The adapter writes a *view* of that folder, `<folder>/rlhf-lens/`, laid out as a run
directory:

```
<folder>/rlhf-lens/
  run.json                                 task, the trainer, the reference policy and prompts chosen
  data/prompts.jsonl                       only when prompts were given (split "eval" unless they say)
  checkpoints/<trainer>/step-00000N/       links to checkpoint-N's safetensors, JSON and text files,
  checkpoints/<trainer>/final/             and the top-level model; meta.json written by the adapter
  logs/metrics.jsonl                       trainer_state.json's log history, keys mapped by TRL_TO_OURS
  analyses/, report.html                   what the analyses and the report write, as for any run
```

Only `*.safetensors`, `*.json`, `*.txt`, `*.model` and `*.jinja` files are linked, and
`trainer_state.json` is read as JSON, so `training_args.bin`, `rng_state*.pth`, `optimizer.pt`,
`scheduler.pt` and any other pickle in the folder are never opened, not even by `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_json
from .env import collect_env
from .errors import RunFormatError
from .hashing import sha256_bytes
from .jsonl import dump_jsonl_line
from .keys import TRL_TO_OURS
from .layout import (
    FINAL_TAG,
    MODEL_CONFIG_JSON,
    checkpoint_dir,
    checkpoint_tag,
    data_path,
    meta_path,
    metrics_path,
    run_json_path,
)
from .manifest import build_manifest, write_manifest
from .reader import read_model_config
from .weights import safetensors_weight_files

TRAINER_STATE = "trainer_state.json"
VIEW_DIR = "rlhf-lens"
"""The run-directory view inside a TRL output folder."""
LINKED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja")
"""The only files a view links to: weights, configs, tokenizer files. Never a pickle."""
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TASK = "external"
"""The task of a TRL run unless one is named: no built-in prompts, labels or gold reward."""


def is_trl_output(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` looks like a TRL (HF Trainer) output folder: a trainer_state.json at the top or in a
    checkpoint-N/ folder."""
    folder = Path(folder)
    return (folder / TRAINER_STATE).is_file() or any((cp / TRAINER_STATE).is_file() for _, cp in trl_checkpoints(folder))


def trl_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, checkpoint-N folder) of `folder`, by step."""
    folder = Path(folder)
    found = (
        [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))] if folder.is_dir() else []
    )
    return sorted(found)


def read_trainer_state(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The newest trainer_state.json of a TRL output folder (the one with the highest global_step), as JSON."""
    folder = Path(folder)
    paths = [cp / TRAINER_STATE for _, cp in trl_checkpoints(folder)] + [folder / TRAINER_STATE]
    states = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise RunFormatError(f"{path}: not valid JSON ({err}); restore the file or delete that checkpoint folder") from err
        if not isinstance(state, dict) or not isinstance(state.get("log_history", []), list):
            raise RunFormatError(f"{path}: expected an object with a `log_history` list, as transformers' Trainer writes")
        states.append(state)
    if not states:
        raise FileNotFoundError(f"{folder} holds no {TRAINER_STATE} (nor checkpoint-N/{TRAINER_STATE}): it is not a TRL output folder")
    return max(states, key=lambda s: int(s.get("global_step") or 0))


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

    Keys TRL shares with us are renamed through TRL_TO_OURS; the others keep TRL's name. Records without a
    step are left out; "time" is the summed `step_time` where TRL logs it (seconds), else null.
    """
    out, elapsed = [], 0.0
    for record in history:
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        if isinstance(record.get("step_time"), int | float):
            elapsed += float(record["step_time"])
        metrics = {
            TRL_TO_OURS.get(k, k): v for k, v in record.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        out.append({"stage": stage, "step": step, "time": elapsed if "step_time" in record else None, **metrics})
    return out


def _iso_mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _link_checkpoint(source: Path, target: Path, meta: dict[str, Any]) -> None:
    """Make `target` a checkpoint of the view: links to `source`'s vetted weights and JSON/text files, meta.json
    last. An unchanged checkpoint (same meta.json) is left as it is."""
    safetensors_weight_files(source)  # vet the weights before anything links to them
    if meta_path(target).is_file() and json.loads(meta_path(target).read_text(encoding="utf-8")) == meta:
        return
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in LINKED_SUFFIXES and path.name != TRAINER_STATE:
            (target / path.name).symlink_to(path.absolute())
    atomic_write_json(meta_path(target), meta)


def _checkpoint_meta(stage: str, step: int, tag: str, source: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """meta.json of a view checkpoint; `records` are the stage's metric records (`metric_records`)."""
    logged = [r for r in records if r["step"] <= step]
    metrics = {k: v for k, v in logged[-1].items() if k not in ("stage", "step", "time")} if logged else {}
    weights = safetensors_weight_files(source)
    return {
        "stage": stage,
        "kind": "policy",
        "step": step,
        "tag": tag,
        "created": _iso_mtime(weights[0]),
        "metrics": metrics,
        "source": str(source),
    }


def _prompt_records(path: Path) -> list[dict[str, Any]]:
    """The records of a prompts JSONL file as data/prompts.jsonl records: {"id", "split", "prompt"}."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
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
    view = folder / VIEW_DIR
    if not os.access(view if view.is_dir() else folder, os.W_OK):
        raise ValueError(f"{view} cannot be written (the analyses' cache and the report go there): copy {folder} somewhere writable")
    previous = _previous_choices(view)
    reference = Path(reference).absolute() if reference is not None else previous.get("reference")
    prompts = Path(prompts).absolute() if prompts is not None else previous.get("prompts")
    task = task or previous.get("task") or _TASK

    sources = [(step, tag, path) for step, path in trl_checkpoints(folder) for tag in [checkpoint_tag(step)]]
    sources = [s for s in sources if (s[2] / MODEL_CONFIG_JSON).is_file()]
    if (folder / MODEL_CONFIG_JSON).is_file():
        final_step = int(state.get("max_steps") or state.get("global_step") or 0)
        sources.append((max([final_step] + [s[0] for s in sources]), FINAL_TAG, folder))
    if not sources:
        raise FileNotFoundError(
            f"{folder} holds no model: neither checkpoint-N/ folders with {MODEL_CONFIG_JSON} nor a saved model at the top"
        )
    if reference is not None:
        _check_reference(Path(reference), sources[-1][2])

    config = {
        "source": "trl",
        "trl_folder": str(folder),
        "trainer": stage,
        "reference": str(reference) if reference is not None else None,
        "prompts": str(prompts) if prompts is not None else None,
        "task": task,
        "trainer_state": {k: v for k, v in state.items() if k != "log_history" and isinstance(v, int | float | str | bool | None)},
        "stages": [{"name": stage, "kind": "policy"}],
    }
    manifest = build_manifest(
        name=folder.name,
        task=task,
        seed=int(state.get("seed", 0) or 0),
        config=config,
        env=_env(),
        created=_iso_mtime(sources[-1][2] / MODEL_CONFIG_JSON),
    )
    records = metric_records(history, stage)
    for step, tag, source in sources:
        _link_checkpoint(source, checkpoint_dir(view, stage, tag), _checkpoint_meta(stage, step, tag, source, records))
    _remove_stale_checkpoints(view, {tag for _, tag, _ in sources})
    manifest["stages"] = [
        {"name": stage, "kind": "policy", "status": "done", "checkpoints": [tag for _, tag, _ in sources], "init_from": None}
    ]
    if reference is not None:
        manifest["results"] = {stage: {"policy_from": str(reference)}}
    if prompts is not None:
        lines = b"".join(dump_jsonl_line(r, Path(prompts)) for r in _prompt_records(Path(prompts)))
        atomic_write_bytes(data_path(view, "prompts"), lines)
        manifest["data"]["prompts.jsonl"] = {"path": "data/prompts.jsonl", "sha256": sha256_bytes(lines), "records": lines.count(b"\n")}
    metrics = b"".join(dump_jsonl_line(r, metrics_path(view)) for r in records)
    atomic_write_bytes(metrics_path(view), metrics)
    write_manifest(view, manifest)
    return view


def _previous_choices(view: Path) -> dict[str, Any]:
    path = run_json_path(view)
    if not path.is_file():
        return {}
    config = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    return {
        "reference": Path(config["reference"]) if config.get("reference") else None,
        "prompts": Path(config["prompts"]) if config.get("prompts") else None,
        "task": config.get("task"),
    }


def _remove_stale_checkpoints(view: Path, tags: set[str]) -> None:
    for stage_dir in (view / "checkpoints").iterdir() if (view / "checkpoints").is_dir() else []:
        for entry in stage_dir.iterdir():
            if entry.is_dir() and entry.name not in tags:
                shutil.rmtree(entry)


def _env() -> dict[str, Any]:
    env = collect_env()
    env["device"] = "unknown (trained by TRL)"
    env["git_commit"] = None  # the commit of rlhf-lens's own checkout says nothing about the TRL run
    return env


__all__ = ["VIEW_DIR", "is_trl_output", "metric_records", "read_trainer_state", "trainer_kind", "trl_checkpoints", "trl_view"]
