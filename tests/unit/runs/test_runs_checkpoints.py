"""Checkpoints: save/load, ordering, complete-only listing, swap on re-save, pickles refused."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools

import pytest
import torch

from rlhf_lens.runs import Run, RunFormatError, RunLookupError, RunWriter, checkpoint_tag


def test_save_and_load_model_tokenizer_state(new_run, tiny):
    writer = new_run({"sft": "sft"})
    model, tokenizer = tiny.lm(1), tiny.tokenizer()
    folder = writer.save_checkpoint(
        "sft",
        "final",
        model=model,
        tokenizer=tokenizer,
        step=10,
        metrics={"loss": 1.5, "eval/loss": float("nan")},
        state={"step": 10, "t": torch.arange(3)},
        extra_meta={"note": "x"},
    )
    assert folder == writer.path / "checkpoints" / "sft" / "final"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "meta.json", "state.safetensors", "state.json", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert writer.manifest["stages"][0]["checkpoints"] == ["final"]

    run = Run.open(writer.path)
    cp = run.checkpoint("sft")
    assert (cp.stage, cp.tag, cp.step) == ("sft", "final", 10)
    assert cp.meta["kind"] == "sft" and cp.meta["metrics"] == {"loss": 1.5, "eval/loss": None}
    assert cp.meta["note"] == "x" and cp.meta["created"].endswith("Z")
    loaded = run.load_model("sft")
    assert type(loaded).__name__ == "GPT2LMHeadModel" and not loaded.training
    assert tiny.same_weights(model, loaded)
    assert run.load_tokenizer().encode("w3 w7 zz") == [5, 9, 1]
    assert run.load_tokenizer("sft", "final").pad_token_id == 0
    state = run.load_state("sft", "final")
    assert state["step"] == 10 and torch.equal(state["t"], torch.arange(3))


def test_checkpoints_sorted_by_step_final_last_and_incomplete_ignored(new_run, tiny):
    writer = new_run({"sft": "sft", "base": "base"})
    for step in (20, 5):
        writer.save_checkpoint("sft", checkpoint_tag(step), model=tiny.lm(step), step=step, metrics={})
    writer.save_checkpoint("sft", "final", model=tiny.lm(0), step=20, metrics={})
    stage_dir = writer.path / "checkpoints" / "sft"
    (stage_dir / "step-000030").mkdir()  # killed before meta.json: incomplete
    (stage_dir / "step-000030" / "model.safetensors").write_bytes(b"partial")
    (stage_dir / ".step-000040.tmp-123").mkdir()  # a save in progress
    (stage_dir / ".step-000040.tmp-123" / "meta.json").write_text('{"step": 40, "tag": "step-000040"}')

    run = Run.open(writer.path)
    assert [c.tag for c in run.checkpoints("sft")] == ["step-000005", "step-000020", "final"]
    assert run.checkpoints("base") == []
    with pytest.raises(RunLookupError, match=r"no complete checkpoint 'step-000030'; available: \['step-000005'"):
        run.checkpoint("sft", "step-000030")
    with pytest.raises(ValueError, match="the tag says step 7"):
        writer.save_checkpoint("sft", "step-000007", model=tiny.lm(0), step=8, metrics={})


def test_reward_and_value_models_load_with_score_heads(new_run, tiny):
    writer = new_run({"reward": "reward", "critic": "reward", "policy": "policy"})
    scorer = tiny.scorer(2)
    writer.save_checkpoint("reward", "final", model=scorer, step=1, metrics={})
    writer.save_checkpoint("critic", "final", model=tiny.lm(3), step=1, metrics={}, extra_meta={"reward_kind": "generative"})
    value = tiny.scorer(4)
    writer.save_checkpoint("policy", "final", model=tiny.lm(5), value_model=value, step=1, metrics={})
    run = Run.open(writer.path)

    reward_model = run.load_model("reward")
    assert type(reward_model).__name__ == "GPT2ForSequenceClassification" and tiny.same_weights(scorer, reward_model)
    assert type(run.load_model("critic")).__name__ == "GPT2LMHeadModel"
    assert type(run.load_model("policy", head="score")).__name__ == "GPT2ForSequenceClassification"
    assert tiny.same_weights(value, run.load_value_model("policy"))
    with pytest.raises(RunLookupError, match="has no value model"):
        run.load_value_model("reward")
    with pytest.raises(ValueError, match="head must be one of"):
        run.load_model("reward", head="value")


def test_resave_final_replaces_it_and_leaves_no_temp_folders(new_run, tiny):
    writer = new_run({"sft": "sft"})
    writer.save_checkpoint("sft", "final", model=tiny.lm(1), step=1, metrics={})
    second = tiny.lm(2)
    writer.save_checkpoint("sft", "final", model=second, step=2, metrics={})
    run = Run.open(writer.path)
    assert run.checkpoint("sft").step == 2 and tiny.same_weights(second, run.load_model("sft"))
    assert [p.name for p in (writer.path / "checkpoints" / "sft").iterdir()] == ["final"]
    assert writer.manifest["stages"][0]["checkpoints"] == ["final"]


def test_failed_save_keeps_previous_checkpoint(new_run, tiny):
    writer = new_run({"sft": "sft"})
    first = tiny.lm(1)
    writer.save_checkpoint("sft", "final", model=first, step=1, metrics={})
    with pytest.raises(TypeError, match="cannot store set"):
        writer.save_checkpoint("sft", "final", model=tiny.lm(2), step=2, metrics={}, state={"bad": {1}})
    assert [p.name for p in (writer.path / "checkpoints" / "sft").iterdir()] == ["final"]
    assert tiny.same_weights(first, Run.open(writer.path).load_model("sft"))


def test_open_restores_a_checkpoint_caught_mid_swap(new_run, tiny):
    writer = new_run({"sft": "sft"})
    first = tiny.lm(1)
    final = writer.save_checkpoint("sft", "final", model=first, step=1, metrics={})
    writer.save_checkpoint("sft", "step-000001", model=first, step=1, metrics={})
    # killed between "final -> .final.old-PID" and ".final.tmp-PID -> final"
    os.rename(final, final.with_name(".final.old-999"))
    (final.parent / ".final.tmp-999").mkdir()
    (final.parent / ".step-000002.tmp-998").mkdir()
    assert [c.tag for c in Run.open(writer.path).checkpoints("sft")] == ["step-000001"]

    RunWriter.open(writer.path)
    assert sorted(p.name for p in final.parent.iterdir()) == ["final", "step-000001"]
    run = Run.open(writer.path)
    assert tiny.same_weights(first, run.load_model("sft", "final"))
    cleanup = run.events().iloc[-1]
    assert cleanup["event"] == "checkpoint_cleanup" and cleanup["restored"] == ["sft/final"]


class _Marker:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _fake_checkpoint(writer, tag, weights_name, marker, tiny):
    folder = writer.path / "checkpoints" / "sft" / tag
    folder.mkdir(parents=True)
    tiny.lm(0).config.to_json_file(folder / "config.json")
    (folder / weights_name).write_bytes(pickle.dumps(_Marker(marker)))
    (folder / "meta.json").write_text(
        json.dumps({"stage": "sft", "kind": "sft", "step": 1, "tag": tag, "created": "2026-01-01T00:00:00Z", "metrics": {}})
    )
    return folder


def test_pickled_bin_checkpoint_is_refused_without_unpickling(new_run, tiny, tmp_path):
    writer = new_run({"sft": "sft"})
    marker = tmp_path / "pwned"
    _fake_checkpoint(writer, "final", "pytorch_model.bin", marker, tiny)
    run = Run.open(writer.path)
    assert [c.tag for c in run.checkpoints("sft")] == ["final"]
    with pytest.raises(RunFormatError) as err:
        run.load_model("sft")
    message = str(err.value)
    assert "pytorch_model.bin" in message and "never loads pickles" in message and "save_pretrained" in message
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_refused_without_unpickling(new_run, tiny, tmp_path):
    writer = new_run({"sft": "sft"})
    marker = tmp_path / "pwned"
    _fake_checkpoint(writer, "final", "model.safetensors", marker, tiny)
    with pytest.raises(RunFormatError, match="model.safetensors is not a valid safetensors file"):
        Run.open(writer.path).load_model("sft")
    assert not marker.exists()
    # The payload was live: a static disassembly (which executes nothing) shows it would call open(marker).
    listing = io.StringIO()
    pickletools.dis((writer.path / "checkpoints/sft/final/model.safetensors").read_bytes(), out=listing)
    assert "open" in listing.getvalue() and str(marker) in listing.getvalue()
