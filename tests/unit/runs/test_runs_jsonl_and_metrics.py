"""metrics.jsonl: appends, torn last line vs corrupt middle line, non-finite values, rewind on resume."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf_lens.runs import Run, RunFormatError, append_jsonl, read_jsonl, rewrite_jsonl


def test_torn_last_line_is_skipped_and_counted(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    records, torn = read_jsonl(path)
    assert records == [{"step": 1}, {"step": 2}] and torn == 1


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}')
    assert read_jsonl(path) == ([{"step": 1}, {"step": 2}], 0)


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(RunFormatError) as err:
        read_jsonl(path)
    assert str(path) in str(err.value) and "line 3:" in str(err.value)


def test_append_after_torn_line_cuts_the_fragment(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    append_jsonl(path, {"step": 3})
    assert path.read_text() == '{"step": 1}\n{"step": 3}\n'
    path.write_text('{"step": 1}')  # complete record, newline lost: kept
    append_jsonl(path, {"step": 2})
    assert read_jsonl(path) == ([{"step": 1}, {"step": 2}], 0)


def test_rewrite_jsonl_replaces_content(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"a": 1})
    assert rewrite_jsonl(path, [{"b": 2}, {"c": "é\nx"}]) == 2
    assert read_jsonl(path) == ([{"b": 2}, {"c": "é\nx"}], 0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # no temp files left


def test_log_metrics_and_events(new_run):
    writer = new_run({"sft": "sft"})
    writer.log_metrics("sft", 1, {"loss": 2.5, "eval/loss": float("nan"), "grad": torch.tensor(0.5), "inf": float("-inf")})
    writer.log_event("nan_skip", stage="sft", step=2, value=float("inf"))
    lines = (writer.path / "logs" / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])  # strict JSON: no NaN tokens
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    assert first["loss"] == 2.5 and first["eval/loss"] is None and first["grad"] == 0.5 and first["inf"] is None
    assert isinstance(first["time"], float)
    run = Run.open(writer.path)
    metrics = run.metrics()
    assert list(metrics["step"]) == [1] and "event" not in metrics.columns
    events = run.events()
    assert list(events["event"]) == ["nan_skip"] and events["value"].isna().all()
    with pytest.raises(ValueError, match="reserved"):
        writer.log_metrics("sft", 3, {"step": 4})
    with pytest.raises(ValueError, match="no stage 'policy'"):
        writer.log_metrics("policy", 3, {"loss": 1.0})


def test_reader_counts_torn_metric_line(new_run):
    writer = new_run({"sft": "sft"})
    writer.log_metrics("sft", 1, {"loss": 1.0})
    with open(writer.path / "logs" / "metrics.jsonl", "a") as f:
        f.write('{"stage": "sft", "step": 2, "lo')
    run = Run.open(writer.path)
    assert run.torn_metric_lines == 0
    assert list(run.metrics("sft")["step"]) == [1]
    assert run.torn_metric_lines == 1


def test_rewind_metrics_for_exact_resume(new_run):
    writer = new_run({"sft": "sft", "policy": "policy"})
    for step in range(1, 5):
        writer.log_metrics("sft", step, {"loss": float(step)})
    writer.log_event("checkpoint", stage="policy", step=2)
    for step in range(1, 5):
        writer.log_metrics("policy", step, {"reward": float(step)})
    for step in (2, 4):
        writer.write_rollouts("policy", step, [{"sample_id": 0, "reward": 1.0}])
    for step in (0, 2, 4):
        writer.write_eval_rollouts("policy", step, [{"sample_id": 0, "reward": 1.0}])
    with open(writer.path / "logs" / "metrics.jsonl", "a") as f:
        f.write('{"stage": "policy", "st')  # killed mid-append

    assert writer.rewind_metrics("policy", 2) == 2
    run = Run.open(writer.path)
    metrics = run.metrics()
    assert list(metrics.query("stage == 'sft'")["step"]) == [1, 2, 3, 4]
    assert list(metrics.query("stage == 'policy'")["step"]) == [1, 2]
    assert run.torn_metric_lines == 0
    events = run.events()
    assert list(events["event"]) == ["checkpoint", "resume"]
    resume = events.iloc[-1]
    assert (resume["stage"], resume["step"], resume["dropped_records"], resume["torn_lines"]) == ("policy", 2, 2, 1)
    assert sorted(run.rollouts("policy")["step"]) == [2]
    assert sorted(run.eval_rollouts("policy")["step"]) == [0, 2]
    writer.log_metrics("policy", 3, {"reward": 30.0})  # the curve continues, never forks
    assert list(Run.open(writer.path).metrics("policy")["reward"]) == [1.0, 2.0, 30.0]
