"""run.json: written first, round trip, schema checks naming the field, version refusal."""

from __future__ import annotations

import json
import platform

import pytest

from rlhf_lens.runs import (
    FORMAT_VERSION,
    Run,
    RunFormatError,
    RunLookupError,
    RunWriter,
    load_schema,
    validate_manifest,
)
from rlhf_lens.runs.manifest import read_manifest


def test_manifest_round_trip(new_run):
    writer = new_run({"base": "base"})
    writer.add_stage("reward_small", "reward")
    writer.set_stage_status("base", "done")
    writer.set_result("base", "eval/perplexity", 8.5)
    writer.update_results("base", {"untrained_eval/perplexity": 50.0, "bad": float("nan")})

    on_disk = json.loads((writer.path / "run.json").read_text())
    assert on_disk == writer.manifest
    run = Run.open(writer.path)
    assert run.manifest == on_disk
    assert (run.name, run.task, run.seed) == ("run", "sentiment", 7)
    assert run.config == {"lr": 1e-3, "model": {"n_layer": 1}}
    assert on_disk["format"] == "rlhf-lens-run" and on_disk["format_version"] == FORMAT_VERSION
    assert on_disk["created"].endswith("Z")
    assert on_disk["results"] == {"base": {"eval/perplexity": 8.5, "untrained_eval/perplexity": 50.0, "bad": None}}
    env = on_disk["env"]
    assert env["python"] == platform.python_version()
    assert env["device"] in ("cpu", "cuda") and env["torch"][0].isdigit()
    assert [(s.name, s.kind, s.status) for s in run.stages()] == [("base", "base", "done"), ("reward_small", "reward", "pending")]
    assert [s.name for s in run.stages(kind="reward")] == ["reward_small"]
    assert run.stage("base").checkpoints == ()


def test_create_writes_run_json_and_layout(new_run):
    writer = new_run()
    assert sorted(p.name for p in writer.path.iterdir()) == ["checkpoints", "data", "logs", "run.json"]
    validate_manifest(json.loads((writer.path / "run.json").read_text()))


def test_create_refuses_existing_run_unless_overwrite(new_run, tmp_path):
    writer = new_run({"base": "base"})
    with pytest.raises(FileExistsError, match="already exists"):
        RunWriter.create(writer.path, name="again", task="t", seed=1, config={})
    again = RunWriter.create(writer.path, name="again", task="t", seed=1, config={}, overwrite=True)
    assert Run.open(again.path).name == "again" and again.manifest["stages"] == []

    not_a_run = tmp_path / "precious"
    not_a_run.mkdir()
    (not_a_run / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a run"):
        RunWriter.create(not_a_run, name="x", task="t", seed=1, config={}, overwrite=True)
    assert (not_a_run / "thesis.tex").read_text() == "keep me"


def _corrupt(writer, change):
    manifest = writer.manifest
    change(manifest)
    (writer.path / "run.json").write_text(json.dumps(manifest))


def test_missing_field_is_named(new_run):
    writer = new_run()
    _corrupt(writer, lambda m: m.pop("seed"))
    with pytest.raises(RunFormatError, match=r"missing required field 'seed'") as err:
        Run.open(writer.path)
    assert "run.json" in str(err.value)


def test_wrong_typed_nested_field_is_named(new_run):
    writer = new_run({"sft": "sft"})

    def change(m):
        m["seed"] = "seven"
        m["stages"][0]["kind"] = "trainer"

    _corrupt(writer, change)
    with pytest.raises(RunFormatError) as err:
        Run.open(writer.path)
    message = str(err.value)
    assert "field seed: 'seven' is not of type 'integer'" in message
    assert "field stages[0].kind: 'trainer' is not one of" in message


def test_invalid_change_is_refused_before_writing(new_run):
    writer = new_run({"sft": "sft"})
    before = (writer.path / "run.json").read_bytes()
    with pytest.raises(ValueError, match="kind must be one of"):
        writer.add_stage("x", "critic")
    with pytest.raises(ValueError, match="status must be one of"):
        writer.set_stage_status("sft", "finished")
    with pytest.raises(ValueError, match="no stage 'policy'"):
        writer.set_result("policy", "gold/mean", 1.0)
    with pytest.raises(ValueError, match="init_from must be None or"):
        writer.add_stage("policy", "policy", init_from={"spec": "runs/a:sft"})
    with pytest.raises(ValueError, match="stage name '../evil' is not allowed"):
        writer.add_stage("../evil", "policy")
    assert (writer.path / "run.json").read_bytes() == before


def test_unknown_format_version_is_refused(new_run):
    writer = new_run()
    _corrupt(writer, lambda m: m.update(format_version=2))
    with pytest.raises(RunFormatError) as err:
        Run.open(writer.path)
    message = str(err.value)
    assert "found format_version 2" in message
    assert "reads format_version 1 only" in message
    assert "upgrade" in message
    with pytest.raises(RunFormatError, match="found format_version 2"):
        RunWriter.open(writer.path)


def test_not_a_run_and_missing_run_json(tmp_path, new_run):
    with pytest.raises(FileNotFoundError, match=r"nowhere/run\.json not found \(the folder does not exist\)"):
        Run.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no run.json"):
        Run.open(tmp_path / "empty")
    writer = new_run()
    (writer.path / "run.json").write_text('{"format": "rlhf-lens-run",\n "format_version": 1,,}')
    with pytest.raises(RunFormatError, match=r"run\.json, line 2 column"):
        read_manifest(writer.path)
    (writer.path / "run.json").write_text('{"format": "something-else"}')
    with pytest.raises(RunFormatError, match="not an rlhf-lens run manifest"):
        Run.open(writer.path)


def test_stage_lookup_lists_stages(new_run):
    run = Run.open(new_run({"base": "base", "sft": "sft"}).path)
    with pytest.raises(RunLookupError, match=r"no stage 'policy'; its stages are \['base', 'sft'\]"):
        run.stage("policy")


def test_schema_is_draft_2020_12():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["required"]) == {"format", "format_version", "name", "created", "task", "seed", "config", "stages", "data", "env"}
