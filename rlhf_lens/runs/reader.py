"""Run: read a run directory (used by analyses, reports and notebooks).

Reading never changes a run, except the analysis cache under analyses/.
Models are loaded from safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_bytes, atomic_write_json
from .cache_dirs import is_writable, user_cache_dir
from .errors import RunFormatError, RunLookupError
from .file_memo import HashIndex, memoised
from .hashing import sha256_bytes
from .info import CheckpointInfo, StageInfo
from .jsonl import read_jsonl
from .jsonsafe import to_jsonable
from .layout import (
    FINAL_TAG,
    REPORT_HTML,
    TOKENIZER_FILES,
    analyses_dir,
    cache_entry_dir,
    cache_entry_paths,
    checkpoints_dir,
    data_file_name,
    data_path,
    eval_rollouts_dir,
    meta_path,
    metrics_path,
    model_config_path,
    report_path,
    rollouts_dir,
    rollouts_root,
    state_paths,
    value_dir,
)
from .manifest import read_manifest
from .safe_fs import ensure_dir, refuse_links, remove
from .state import load_state
from .weights import safetensors_weight_files

if TYPE_CHECKING:
    import pandas as pd

HEADS: tuple[str, ...] = ("causal_lm", "score")
HASH_INDEX = "file-hashes.json"
"""The content hashes of the run's files, in the analyses' cache folder (`rlhf_lens.runs.file_memo`)."""


class Run:
    """A run directory opened for reading. Make one with `Run.open(path)`."""

    torn_metric_lines: int
    """Torn last lines skipped by the latest `metrics()` / `events()` call (0 or 1)."""

    def __init__(self, path: Path, manifest: dict[str, Any], cache_dir: str | os.PathLike[str] | None = None) -> None:
        self._path = path
        self._manifest = manifest
        self._cache_dir = Path(cache_dir).absolute() if cache_dir is not None else None
        self._cache_checked = False
        self._hashes: HashIndex | None = None
        self.torn_metric_lines = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> Run:
        """Open the run at `path`, validating run.json (RunFormatError / FileNotFoundError).

        `cache_dir`: where the analyses' cache goes (default: <run>/analyses, or a per-user cache folder when the
        run cannot be written; see `cache_dir`).
        """
        path = Path(path).absolute()
        return cls(path, read_manifest(path), cache_dir)

    def __repr__(self) -> str:
        return f"Run({str(self._path)!r}, task={self.task!r}, stages={[s.name for s in self.stages()]})"

    # ------------------------------------------------------------------ manifest

    @property
    def path(self) -> Path:
        """The run folder."""
        return self._path

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of run.json as read by `Run.open`."""
        return json.loads(json.dumps(self._manifest))

    @property
    def name(self) -> str:
        """The run's name."""
        return self._manifest["name"]

    @property
    def task(self) -> str:
        """The task the run trained on, e.g. "sentiment"."""
        return self._manifest["task"]

    @property
    def seed(self) -> int:
        """The run's global seed."""
        return self._manifest["seed"]

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the full resolved config."""
        return json.loads(json.dumps(self._manifest["config"]))

    def stages(self, kind: str | None = None) -> list[StageInfo]:
        """The stages in run order, optionally only those of `kind` (base, sft, reward, policy)."""
        return [
            StageInfo(
                name=s["name"],
                kind=s["kind"],
                status=s["status"],
                checkpoints=tuple(s["checkpoints"]),
                init_from=dict(s["init_from"]) if s["init_from"] is not None else None,
            )
            for s in self._manifest["stages"]
            if kind is None or s["kind"] == kind
        ]

    def stage(self, name: str) -> StageInfo:
        """The stage called `name`; RunLookupError listing the stages if there is none."""
        for info in self.stages():
            if info.name == name:
                return info
        known = [s.name for s in self.stages()]
        raise RunLookupError(f"run {self._path} has no stage {name!r}; its stages are {known}")

    # ------------------------------------------------------------------ checkpoints

    def checkpoints(self, stage: str) -> list[CheckpointInfo]:
        """Complete checkpoints of `stage` (meta.json present and valid), by step, "final" last.

        Hidden folders (a save in progress, or one that was killed) are ignored.
        """
        info = self.stage(stage)
        folder = checkpoints_dir(self._path, info.name)
        found = []
        for entry in folder.iterdir() if folder.is_dir() else []:
            if entry.name.startswith(".") or not entry.is_dir() or not meta_path(entry).is_file():
                continue
            try:
                meta = json.loads(meta_path(entry).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as err:
                warnings.warn(f"{meta_path(entry)}: unreadable ({err}); checkpoint ignored", stacklevel=2)
                continue
            step = meta.get("step") if isinstance(meta, dict) else None
            if isinstance(step, bool) or not isinstance(step, int):
                warnings.warn(f'{meta_path(entry)}: no integer "step"; checkpoint ignored', stacklevel=2)
                continue
            found.append(CheckpointInfo(stage=info.name, tag=entry.name, step=step, path=entry, meta=meta))
        return sorted(found, key=lambda c: (c.tag == FINAL_TAG, c.step, c.tag))

    def checkpoint(self, stage: str, tag: str = FINAL_TAG) -> CheckpointInfo:
        """The complete checkpoint `tag` of `stage`; RunLookupError listing the tags there are."""
        available = self.checkpoints(stage)
        for cp in available:
            if cp.tag == tag:
                return cp
        tags = [c.tag for c in available] or "none"
        raise RunLookupError(f"run {self._path}: stage {stage!r} has no complete checkpoint {tag!r}; available: {tags}")

    def load_model(self, stage: str, tag: str = FINAL_TAG, *, head: str | None = None) -> Any:
        """The checkpoint's HF model, in eval mode, from safetensors only.

        `head=None` picks from meta.json: a reward checkpoint (unless
        "reward_kind" is "generative") loads as AutoModelForSequenceClassification
        ("score"), anything else as AutoModelForCausalLM ("causal_lm").
        """
        if head is not None and head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)} or None (automatic), got {head!r}")
        cp = self.checkpoint(stage, tag)
        if head is None:
            is_scorer = cp.meta.get("kind") == "reward" and cp.meta.get("reward_kind") != "generative"
            head = "score" if is_scorer else "causal_lm"
        return load_hf_folder(cp.path, head)

    def load_value_model(self, stage: str, tag: str = FINAL_TAG) -> Any:
        """The PPO value model saved with the checkpoint (AutoModelForSequenceClassification), in eval mode."""
        cp = self.checkpoint(stage, tag)
        folder = value_dir(cp.path)
        if not folder.is_dir():
            raise RunLookupError(f"{cp.path} has no value model (no {folder.name}/ folder); only PPO saves one")
        return load_hf_folder(folder, "score")

    def load_tokenizer(self, stage: str | None = None, tag: str = FINAL_TAG) -> Any:
        """The tokenizer saved with a checkpoint.

        With `stage=None`: from the first stage (in run order) with a complete
        checkpoint that has tokenizer files, preferring its "final" checkpoint,
        else its latest.
        """
        from transformers import AutoTokenizer

        if stage is not None:
            cp = self.checkpoint(stage, tag)
            if not _has_tokenizer(cp.path):
                raise RunLookupError(f"{cp.path} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
        else:
            cp = self._first_tokenizer_checkpoint()
        return AutoTokenizer.from_pretrained(str(cp.path), local_files_only=True)

    def _first_tokenizer_checkpoint(self) -> CheckpointInfo:
        for info in self.stages():
            with_tokenizer = [c for c in self.checkpoints(info.name) if _has_tokenizer(c.path)]
            if with_tokenizer:
                finals = [c for c in with_tokenizer if c.tag == FINAL_TAG]
                return finals[0] if finals else with_tokenizer[-1]
        raise RunLookupError(f"run {self._path}: no complete checkpoint with a tokenizer in any stage")

    def load_state(self, stage: str, tag: str = FINAL_TAG) -> Any:
        """Training state saved with the checkpoint (see `rlhf_lens.runs.state`)."""
        cp = self.checkpoint(stage, tag)
        try:
            return load_state(cp.path)
        except FileNotFoundError as err:
            raise RunLookupError(str(err)) from err

    # ------------------------------------------------------------------ logs

    def _log_records(self) -> list[dict[str, Any]]:
        path = metrics_path(self._path)
        if not path.is_file():
            self.torn_metric_lines = 0
            return []
        records, self.torn_metric_lines = memoised("metrics", [path], lambda: read_jsonl(path))
        return [dict(r) for r in records]

    def metrics(self, stage: str | None = None) -> pd.DataFrame:
        """Metric records of logs/metrics.jsonl as a DataFrame (stage, step, time, <metric>...).

        Events are left out (see `events()`). Sets `torn_metric_lines`.
        """
        import pandas as pd

        if stage is not None:
            self.stage(stage)
        rows = [r for r in self._log_records() if "event" not in r and (stage is None or r.get("stage") == stage)]
        return pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=["stage", "step", "time"])

    def events(self) -> pd.DataFrame:
        """Event records of logs/metrics.jsonl (event, time, ...) as a DataFrame. Sets `torn_metric_lines`."""
        import pandas as pd

        rows = [r for r in self._log_records() if "event" in r]
        return pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=["event", "time"])

    def rollouts(self, stage: str | None = None) -> pd.DataFrame:
        """All training rollout shards (of one stage, or all) as one DataFrame, sorted by stage and step.

        Per-token columns come back as numpy arrays, one per row.
        """
        if stage is not None:
            folders = [rollouts_dir(self._path, self.stage(stage).name)]
        else:
            root = rollouts_root(self._path)
            folders = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        return _read_shards(folders)

    def eval_rollouts(self, stage: str) -> pd.DataFrame:
        """The evaluation samples of a policy stage, one shard per evaluation (step 0: the starting policy).

        Every evaluation samples the same eval prompts with the same seeds, so rows
        with the same `prompt_id` compare the policy across steps. Empty (columns
        stage, step) for a stage that logged none (best-of-n, or a run written before
        evaluation samples were logged).
        """
        return _read_shards([eval_rollouts_dir(self._path, self.stage(stage).name)])

    # ------------------------------------------------------------------ data

    def data(self, kind: str) -> list[dict[str, Any]]:
        """Records of data/<kind>.jsonl (kind: corpus, sft, prompts, feedback), checked against run.json's sha256."""
        file_name = data_file_name(kind)
        path = data_path(self._path, kind)
        entry = self._manifest["data"].get(file_name)
        if not path.is_file():
            have = sorted(self._manifest["data"]) or "none"
            raise RunLookupError(f"run {self._path} has no {path.relative_to(self._path)}; data files: {have}")
        if entry is None:
            warnings.warn(f"{path} is not recorded in run.json; reading it unchecked", stacklevel=2)
        elif self.file_sha256(path) != entry["sha256"]:
            raise RunFormatError(
                f"{path} changed after the run was written: its sha256 differs from run.json's "
                f"{entry['sha256'][:12]}...; restore the original file to analyse this run"
            )
        records, torn = memoised("data", [path], lambda: read_jsonl(path))
        if torn:
            raise RunFormatError(f"{path}: the last line is not valid JSON; data files are never appended to")
        return [dict(r) for r in records]

    def feedback(self) -> pd.DataFrame:
        """data/feedback.jsonl as a DataFrame, one row per judgement."""
        import pandas as pd

        return pd.DataFrame.from_records(self.data("feedback"))

    # ------------------------------------------------------------------ analysis cache

    @property
    def cache_dir(self) -> Path:
        """Where the analyses' cache of this run lives: the `cache_dir` it was opened with, else <run>/analyses when
        the run folder can be written, else `<user cache>/runs/<name>-<hash of its path>` (see `cache_dirs`)."""
        if self._cache_dir is None:  # decided once, so a run's cache does not move while it is analysed
            elsewhere = user_cache_dir() / "runs" / f"{self._path.name}-{sha256_bytes(str(self._path).encode('utf-8'))[:12]}"
            self._cache_dir = analyses_dir(self._path) if is_writable(self._path) else elsewhere
        return self._cache_dir

    @property
    def report_path(self) -> Path:
        """Where the run's report goes by default: <run>/report.html, or into the cache folder when the run cannot be
        written."""
        return (
            report_path(self._path)
            if self.cache_dir == analyses_dir(self._path) or is_writable(self._path)
            else self.cache_dir / REPORT_HTML
        )

    def _cache_root(self) -> Path:
        """The folder below which cache files are written without following a link: the run for <run>/analyses,
        else the cache folder itself. A link anywhere in the cache is refused once, before the first read or write."""
        root = self._path if self.cache_dir == analyses_dir(self._path) else self.cache_dir
        if not self._cache_checked:
            refuse_links(root, self.cache_dir.relative_to(root))
            self._cache_checked = True
        return root

    def save_analysis(self, key: str, df: pd.DataFrame, meta: dict[str, Any]) -> None:
        """Cache an analysis result as <cache>/<key>.parquet + <key>.json (written last)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        root = self._cache_root()
        parquet_path, json_path = cache_entry_paths(self.cache_dir, key)
        clean_meta = to_jsonable(meta, where=f"analysis {key!r} meta", nonfinite="null")
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df), buffer)
        atomic_write_bytes(parquet_path, buffer.getvalue(), root=root)
        try:
            atomic_write_json(json_path, clean_meta, root=root)  # last: it marks the entry complete
        except BaseException:
            remove(root, parquet_path.relative_to(root))  # no half entry left behind
            raise

    def load_analysis(self, key: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """(df, meta) cached under `key`, or None when there is no complete cache entry."""
        import pyarrow.parquet as pq

        self._cache_root()
        parquet_path, json_path = cache_entry_paths(self.cache_dir, key)
        if not (json_path.is_file() and parquet_path.is_file()):
            return None
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
            df = pq.read_table(parquet_path).to_pandas()
        except Exception as err:  # a damaged cache entry: say which file
            raise RunFormatError(
                f"analysis cache {key!r} in {parquet_path.parent} is damaged ({err}); delete "
                f"{parquet_path.name} and {json_path.name} to recompute it"
            ) from err
        return df, meta

    def fingerprints(self, **inputs: Any) -> list[str]:
        """Fingerprints of the inputs an analysis read, for its cache key: any change to them changes the list.

        `inputs` are those of `rlhf_lens.runs.fingerprint.input_fingerprints`: checkpoints_of (stages whose
        checkpoints were read), data (data kinds), metrics, rollouts_of, eval_rollouts_of (stages), manifest.
        """
        from .fingerprint import input_fingerprints

        fingerprints = input_fingerprints(self, **inputs)
        self._hash_index().flush()
        return fingerprints

    def file_sha256(self, path: str | os.PathLike[str]) -> str:
        """The sha256 of a file of this run, computed once per version of the file (`rlhf_lens.runs.file_memo`)."""
        return self._hash_index().sha256(path)

    def _hash_index(self) -> HashIndex:
        if self._hashes is None:

            def save(data: bytes) -> None:
                atomic_write_bytes(self.cache_dir / HASH_INDEX, data, root=self._cache_root())

            self._hashes = HashIndex(self._path, self.cache_dir / HASH_INDEX, save)
        return self._hashes

    def has_rollouts(self, stage: str, *, evaluation: bool = False) -> bool:
        """Whether `stage` logged any training rollout shard (or, with `evaluation`, evaluation shard); reads none."""
        folder = (eval_rollouts_dir if evaluation else rollouts_dir)(self._path, self.stage(stage).name)
        return folder.is_dir() and any(folder.glob("step-*.parquet"))

    def analysis_dir(self, key: str) -> Path:
        """<cache>/<key>/ for bulky intermediates (created if missing, no link followed)."""
        root = self._cache_root()
        return ensure_dir(root, cache_entry_dir(self.cache_dir, key).relative_to(root))


def _read_shards(folders: list[Path]) -> pd.DataFrame:
    """The step-*.parquet shards of `folders` as one DataFrame sorted by stage and step (each version of the shards
    read once per process); a damaged shard is an error naming it."""
    shards = [shard for folder in folders for shard in (sorted(folder.glob("step-*.parquet")) if folder.is_dir() else [])]
    return memoised("shards", shards, lambda: _concat_shards(shards)).copy()


def _concat_shards(shards: list[Path]) -> pd.DataFrame:
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    for shard in shards:
        try:
            frames.append(pq.read_table(shard).to_pandas())
        except Exception as err:  # pyarrow raises several types for damaged files
            raise RunFormatError(f"{shard}: not a readable parquet file ({err}); retrain the stage or restore the file") from err
    if not frames:
        return pd.DataFrame(columns=["stage", "step"])
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["stage", "step"], kind="stable").reset_index(drop=True)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def read_checkpoint_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The meta.json of a checkpoint folder (given by path, e.g. another run's `init_from` source);
    {} for a plain HF folder that has none."""
    path = meta_path(folder)
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RunFormatError(
            f"{path}: unreadable ({err}); the checkpoint folder is damaged: retrain its stage or point to another checkpoint"
        ) from err
    if not isinstance(meta, dict):
        raise RunFormatError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    return meta


def load_hf_folder(folder: str | os.PathLike[str], head: str = "causal_lm", **kwargs: Any) -> Any:
    """from_pretrained on a vetted safetensors folder, offline, eval mode, with one-kernel activations
    (`models.fuse_activations`).

    `head` is "causal_lm" (AutoModelForCausalLM) or "score" (AutoModelForSequenceClassification);
    `kwargs` go to from_pretrained (e.g. num_labels=1 to put a fresh scalar head on a causal LM).
    """
    safetensors_weight_files(folder)  # refuses pickles and fake safetensors before any loader runs
    if head == "score":
        from transformers import AutoModelForSequenceClassification as Auto
    else:
        from transformers import AutoModelForCausalLM as Auto
    from rlhf_lens.models import fuse_activations  # models builds on this package

    try:
        model = Auto.from_pretrained(str(folder), use_safetensors=True, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:  # config.json and weights that disagree, ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunFormatError(
            f"{folder}: transformers could not load this model folder ({type(err).__name__}: {first_line[:300]}); check that "
            "config.json and the weights belong together, or re-save the model with model.save_pretrained(folder)"
        ) from err
    return fuse_activations(model).eval()


def read_model_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The HF config (config.json) of a model folder: a checkpoint, its value/ model, or a local model."""
    path = model_config_path(folder)
    if not path.is_file():
        raise RunLookupError(f"{path} is missing: {folder} is not a Hugging Face model folder (save_pretrained writes config.json)")
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise RunFormatError(f"{path}: not valid JSON ({err}); restore the model's config.json (save_pretrained writes it)") from err
    if not isinstance(config, dict):
        raise RunFormatError(f"{path}: expected a JSON object (a model config), found {type(config).__name__}")
    return config


def has_training_state(folder: str | os.PathLike[str]) -> bool:
    """Whether a checkpoint folder holds the training state exact resume needs (state.json, written after
    state.safetensors)."""
    return state_paths(folder)[1].is_file()


__all__ = ["HEADS", "Run", "has_training_state", "load_hf_folder", "read_checkpoint_meta", "read_model_config"]
