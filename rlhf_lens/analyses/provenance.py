"""Provenance: what was trained, from what, on which data, with which software (run.json, checked again now)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict
from rlhf_lens.runs import Run, data_path
from rlhf_lens.runs.env import collect_env
from rlhf_lens.runs.weights import weights_sha256

register_section(
    "provenance",
    "Provenance",
    order=10,
    intro="What was trained, in which order, from which checkpoints, on which data, with which software: "
    "the run's manifest, with every recorded digest checked again against the files as they are now.",
)


class StagesResult(Result):
    """The stage chain. Columns: stage, kind, status, checkpoints (tags, comma-separated), init_from (the
    spec of a source in another run, or ""), init_from_sha256 (recorded digest of its weights), source_now
    ("unchanged", "changed", "missing" or "" without a source)."""

    columns = ("stage", "kind", "status", "checkpoints", "init_from", "init_from_sha256", "source_now")
    heading = "Stages"


class DataFilesResult(Result):
    """Every data file of the run. Columns: file, records, sha256 (recorded in run.json), verified (the file's
    sha256 now equals the recorded one)."""

    columns = ("file", "records", "sha256", "verified")
    heading = "Data files"


class EnvironmentResult(Result):
    """Software the run was trained with, beside what analyses it now. Columns: item, recorded, now."""

    columns = ("item", "recorded", "now")
    heading = "Environment"


class ConfigResult(Result):
    """The full resolved config, flattened. Columns: key (dotted path, stages by name), value (JSON text)."""

    columns = ("key", "value")
    heading = "Resolved config"

    def table_html(self) -> Markup:
        return views.details(f"Show all {len(self.df)} keys", views.table(self.df, max_rows=None))


@analysis("provenance.stages", result=StagesResult, section="provenance", needs=Needs(manifest=True), order=1)
def analyze_stages(run: Run) -> StagesResult:
    """The stage chain, with each `init_from` source in another run checked against its recorded digest."""
    rows = []
    for stage in run.stages():
        source = stage.init_from or {}
        rows.append(
            {
                "stage": stage.name,
                "kind": stage.kind,
                "status": stage.status,
                "checkpoints": ", ".join(c.tag for c in run.checkpoints(stage.name)),
                "init_from": source.get("spec", ""),
                "init_from_sha256": source.get("sha256", ""),
                "source_now": _source_state(source) if source else "",
            }
        )
    df = pd.DataFrame(rows, columns=list(StagesResult.columns))
    return StagesResult(df=df, verdicts=_stage_verdicts(df))


def _source_state(source: dict) -> str:
    folder = Path(source.get("path", ""))
    if not folder.is_dir():
        return "missing"
    try:
        return "unchanged" if weights_sha256(folder) == source.get("sha256") else "changed"
    except (OSError, ValueError):
        return "missing"


def _stage_verdicts(df: pd.DataFrame) -> tuple[Verdict, ...]:
    verdicts = []
    unfinished = df.query("status != 'done'")
    verdicts.append(
        Verdict(
            "stages finished",
            "warn" if len(unfinished) else "ok",
            f"{len(df) - len(unfinished)} of {len(df)} stages done"
            + (f"; not done: {', '.join(unfinished['stage'])}" if len(unfinished) else ""),
            "warn when a stage is not done",
        )
    )
    sourced = df[df["init_from"] != ""]
    if len(sourced):
        bad = sourced[sourced["source_now"] != "unchanged"]
        verdicts.append(
            Verdict(
                "init_from sources",
                "warn" if len(bad) else "ok",
                f"{len(sourced) - len(bad)} of {len(sourced)} source checkpoints match their recorded sha256"
                + (f"; {', '.join(f'{s}: {n}' for s, n in zip(bad['stage'], bad['source_now']))}" if len(bad) else ""),
                "warn when a source checkpoint in another run changed or is gone (the run can no longer be reproduced from it)",
            )
        )
    return tuple(verdicts)


@analysis("provenance.data", result=DataFilesResult, section="provenance", needs=Needs(manifest=True, all_data=True), order=2)
def analyze_data_files(run: Run) -> DataFilesResult:
    """Every data file recorded in run.json, with its digest checked against the file now."""
    rows = []
    for name, entry in sorted(run.manifest["data"].items()):
        path = data_path(run.path, name.removesuffix(".jsonl"))
        verified = path.is_file() and run.file_sha256(path) == entry["sha256"]
        rows.append({"file": f"data/{name}", "records": entry["records"], "sha256": entry["sha256"], "verified": verified})
    df = pd.DataFrame(rows, columns=list(DataFilesResult.columns))
    bad = df[~df["verified"].astype(bool)]
    verdict = Verdict(
        "data files match run.json",
        "flag" if len(bad) else "ok",
        f"{len(df) - len(bad)} of {len(df)} files match their recorded sha256"
        + (f"; changed or missing: {', '.join(bad['file'])}" if len(bad) else ""),
        "flag when any data file differs from what the run trained on",
    )
    return DataFilesResult(df=df, verdicts=(verdict,))


@analysis("provenance.environment", result=EnvironmentResult, section="provenance", needs=Needs(manifest=True), order=3)
def analyze_environment(run: Run) -> EnvironmentResult:
    """The software recorded at training time beside the software analysing the run now."""
    recorded, now = run.manifest.get("env", {}), collect_env()
    items = list(recorded) + [k for k in now if k not in recorded]
    df = pd.DataFrame(
        [{"item": k, "recorded": _text(recorded.get(k)), "now": _text(now.get(k))} for k in items], columns=list(EnvironmentResult.columns)
    )
    return EnvironmentResult(df=df)


def _text(value) -> str:
    return "" if value is None else str(value)


@analysis("provenance.config", result=ConfigResult, section="provenance", needs=Needs(manifest=True), order=4)
def analyze_config(run: Run) -> ConfigResult:
    """The resolved config as (dotted key, JSON value) rows; stages are keyed by name."""
    return ConfigResult(df=pd.DataFrame(flatten_config(run.config), columns=list(ConfigResult.columns)))


def flatten_config(config: dict, prefix: str = "") -> list[dict]:
    """{"a": {"b": 1}, "stages": [{"name": "sft", ...}]} -> [{"key": "a.b", "value": "1"}, {"key": "stages.sft.name", ...}]."""
    rows = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key == "stages" and isinstance(value, list):
            for i, stage in enumerate(value):
                rows += flatten_config(stage, f"{path}.{stage.get('name', i) if isinstance(stage, dict) else i}.")
        elif isinstance(value, dict) and value:
            rows += flatten_config(value, f"{path}.")
        else:
            rows.append({"key": path, "value": json.dumps(value, ensure_ascii=False)})
    return rows
