"""The TRL adapter on hand-made TRL-shaped folders (the integration test reads real TRL outputs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlhf_lens.runs import RunFormatError, open_run
from rlhf_lens.runs.trl import metric_records, trainer_kind
from rlhf_lens.runs.trl_view import trl_view

HISTORY = [
    {"step": 1, "loss": 0.5, "reward": 0.1, "reward_std": 0.2, "kl": 0.0, "step_time": 0.5, "epoch": 0.1},
    {"step": 2, "loss": 0.4, "reward": 0.3, "reward_std": 0.2, "kl": 0.01, "step_time": 0.25, "epoch": 0.2},
    {"step": 2, "eval_loss": 1.5, "epoch": 0.2},
    {"train_runtime": 3.0, "note": "a record without a step is left out"},
]


def make_trl_folder(root: Path, tiny, *, steps=(2, 4), final: bool = True) -> Path:
    """checkpoint-N/ folders (weights, tokenizer, trainer_state.json, a pickle), and the final model at the top."""
    model, tokenizer = tiny.lm(), tiny.tokenizer()
    for step in steps:
        folder = root / f"checkpoint-{step}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        state = {"global_step": step, "max_steps": steps[-1], "log_history": [r for r in HISTORY if r.get("step", 0) <= step]}
        (folder / "trainer_state.json").write_text(json.dumps(state))
        (folder / "optimizer.pt").write_bytes(b"not opened")
    if final:
        model.save_pretrained(root)
        tokenizer.save_pretrained(root)
    return root


def test_metric_records_rename_trl_keys_and_keep_steps_in_order():
    records = metric_records(HISTORY, "grpo")
    assert [r["step"] for r in records] == [1, 2, 2]
    assert records[2]["eval/loss"] == 1.5 and "eval_loss" not in records[2]
    assert records[0]["time"] == 0.5 and records[1]["time"] == 0.75 and records[2]["time"] is None
    assert all(r["stage"] == "grpo" for r in records)


def test_trainer_kind_from_the_logged_keys():
    assert trainer_kind(HISTORY) == "grpo"
    assert trainer_kind([{"step": 1, "rewards/margins": 0.1}]) == "dpo"
    assert trainer_kind([{"step": 1, "objective/rlhf_reward": 0.1}]) == "ppo"
    assert trainer_kind([{"step": 1, "loss": 1.0}]) == "trl"


def test_a_view_links_weights_but_no_pickle_and_is_refreshed_when_checkpoints_come_and_go(tmp_path, tiny):
    folder = make_trl_folder(tmp_path / "out", tiny)
    run = open_run(folder)
    assert [(c.tag, c.step) for c in run.checkpoints("grpo")] == [("step-000002", 2), ("step-000004", 4), ("final", 4)]
    linked = {p.name for c in run.checkpoints("grpo") for p in c.path.iterdir()}
    assert "model.safetensors" in linked and "trainer_state.json" not in linked and "optimizer.pt" not in linked
    assert run.metrics("grpo")["reward"].tolist()[:2] == [0.1, 0.3]
    assert run.load_model("grpo").config.n_layer == 1
    shutil.rmtree(folder / "checkpoint-2")
    assert [c.tag for c in open_run(folder).checkpoints("grpo")] == ["step-000004", "final"]


def test_bad_reference_and_prompts_get_errors_naming_the_file(tmp_path, tiny):
    folder = make_trl_folder(tmp_path / "out", tiny, final=False)
    other = tmp_path / "other"
    tiny.lm().__class__(tiny.config(vocab_size=60)).save_pretrained(other)
    with pytest.raises(ValueError, match="do not share a tokenizer"):
        trl_view(folder, reference=other)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"text": "no prompt field"}\n')
    with pytest.raises(RunFormatError, match=r"prompts.jsonl, line 2: expected an object with a string \"prompt\""):
        trl_view(folder, prompts=prompts)
    pickled = tmp_path / "pickled"
    (pickled / "checkpoint-1").mkdir(parents=True)
    (pickled / "checkpoint-1" / "config.json").write_text("{}")
    (pickled / "checkpoint-1" / "pytorch_model.bin").write_bytes(b"a pickle")
    (pickled / "checkpoint-1" / "trainer_state.json").write_text(json.dumps({"global_step": 1, "log_history": []}))
    with pytest.raises(RunFormatError, match="never loads pickles"):
        open_run(pickled)
