"""resolve_init_from: "runs/X:stage/tag" -> checkpoint folder + sha256, with errors that list what exists."""

from __future__ import annotations

import hashlib

import pytest

from rlhf_lens.runs import RunLookupError, parse_init_from, resolve_init_from


def test_parse_init_from():
    assert parse_init_from("runs/X:sft/final") == ("runs/X", "sft", "final")
    assert parse_init_from("runs/X:sft") == ("runs/X", "sft", "final")
    assert parse_init_from("/abs/run:policy/step-000050") == ("/abs/run", "policy", "step-000050")
    for bad in ("runs/X", "runs/X:", ":sft", "runs/X:sft/a/b"):
        with pytest.raises(ValueError, match="is not of the form"):
            parse_init_from(bad)


def test_resolve_init_from_and_record_it(new_run, tiny, tmp_path):
    source = new_run({"sft": "sft"}, name="source")
    folder = source.save_checkpoint("sft", "final", model=tiny.lm(1), step=3, metrics={})
    resolved = resolve_init_from("source:sft/final", base_dir=tmp_path)
    assert resolved == {
        "spec": "source:sft/final",
        "path": str(folder),
        "sha256": hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest(),
    }
    assert resolve_init_from(str(source.path) + ":sft") == {**resolved, "spec": str(source.path) + ":sft"}

    target = new_run(name="target")
    target.add_stage("policy", "policy", init_from=resolved)
    assert target.manifest["stages"][0]["init_from"] == resolved


def test_resolve_init_from_errors(new_run, tiny, tmp_path):
    source = new_run({"sft": "sft"}, name="source")
    source.save_checkpoint("sft", "step-000001", model=tiny.lm(1), step=1, metrics={})
    with pytest.raises(FileNotFoundError, match=r"no run at .*missing.*runs in .*: \['source'\]"):
        resolve_init_from("missing:sft", base_dir=tmp_path)
    with pytest.raises(RunLookupError, match=r"no stage 'reward'; its stages are \['sft'\]"):
        resolve_init_from("source:reward", base_dir=tmp_path)
    with pytest.raises(RunLookupError, match=r"no complete checkpoint 'final'; available: \['step-000001'\]"):
        resolve_init_from("source:sft/final", base_dir=tmp_path)
