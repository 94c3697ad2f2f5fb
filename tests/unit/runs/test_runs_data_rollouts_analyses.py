"""data/*.jsonl with digests, rollout shards with per-token list columns, the analysis cache."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from rlhf_lens.runs import Run, RunFormatError, RunLookupError, analysis_key


def test_write_data_records_sha256_and_count(new_run):
    writer = new_run()
    records = [{"id": i, "split": "train" if i < 2 else "eval", "prompt": f"review {i} ünïcode"} for i in range(3)]
    path = writer.write_data("prompts", (r for r in records))  # any iterable
    assert path == writer.path / "data" / "prompts.jsonl"
    entry = writer.manifest["data"]["prompts.jsonl"]
    assert entry == {"path": "data/prompts.jsonl", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "records": 3}
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3
    run = Run.open(writer.path)
    assert run.data("prompts") == records
    writer.write_data("feedback", [{"kind": "comparison", "prompt": "p", "chosen": "a", "rejected": "b", "labeler": "L0"}])
    assert list(Run.open(writer.path).feedback()["chosen"]) == ["a"]
    with pytest.raises(ValueError, match="data kind must be one of"):
        writer.write_data("labels", [])
    with pytest.raises(ValueError, match=r"sft.jsonl record 2\['x'\] is nan"):
        writer.write_data("sft", [{"x": 1.0}, {"x": float("nan")}])


def test_tampered_or_missing_data_is_reported(new_run):
    writer = new_run()
    path = writer.write_data("sft", [{"prompt": "a", "completion": "b"}])
    path.write_text('{"prompt": "a", "completion": "EDITED"}\n')
    run = Run.open(writer.path)
    with pytest.raises(RunFormatError, match="changed after the run was written"):
        run.data("sft")
    with pytest.raises(RunLookupError, match=r"no data/corpus.jsonl; data files: \['sft.jsonl'\]"):
        run.data("corpus")


def _rows(step, n=3):
    return [
        {
            "sample_id": i,
            "prompt_id": i % 2,
            "prompt": f"p{i}",
            "completion": f"c{i}",
            "completion_ids": list(range(i + 1)),
            "logprobs": [-0.5 * j for j in range(i + 1)],
            "kl_per_token": np.linspace(0, 1, i + 1),
            "reward": float(step + i),
            "reward_components": {"sentiment": 0.5, "length": float(i)},
            "finished": i % 2 == 0,
        }
        for i in range(n)
    ]


def test_rollouts_round_trip_with_list_columns(new_run):
    writer = new_run({"policy": "policy", "policy2": "policy"})
    path = writer.write_rollouts("policy", 50, _rows(50))
    assert path == writer.path / "logs" / "rollouts" / "policy" / "step-000050.parquet"
    writer.write_rollouts("policy", 10, pd.DataFrame(_rows(10, n=2)))
    writer.write_rollouts("policy2", 5, _rows(5, n=1))

    run = Run.open(writer.path)
    df = run.rollouts("policy")
    assert list(zip(df["step"], df["sample_id"])) == [(10, 0), (10, 1), (50, 0), (50, 1), (50, 2)]
    assert set(df["stage"]) == {"policy"}
    last = df.iloc[-1]
    assert list(last["completion_ids"]) == [0, 1, 2]
    assert list(last["logprobs"]) == [0.0, -0.5, -1.0]
    np.testing.assert_allclose(last["kl_per_token"], [0.0, 0.5, 1.0])
    assert last["reward_components"] == {"sentiment": 0.5, "length": 2.0}
    assert len(run.rollouts()) == 6 and list(run.rollouts()["stage"]).count("policy2") == 1
    assert run.rollouts("policy2").iloc[0]["reward"] == 5.0


def test_eval_rollouts_live_apart_from_training_rollouts(new_run):
    writer = new_run({"policy": "policy"})
    writer.write_rollouts("policy", 10, _rows(10, n=2))
    path = writer.write_eval_rollouts("policy", 0, _rows(0, n=3))
    writer.write_eval_rollouts("policy", 10, _rows(10, n=3))
    assert path == writer.path / "logs" / "rollouts" / "policy" / "eval" / "step-000000.parquet"
    run = Run.open(writer.path)
    assert list(run.rollouts()["step"]) == [10, 10]
    assert list(run.eval_rollouts("policy")["step"]) == [0, 0, 0, 10, 10, 10]
    assert run.eval_rollouts("policy")["sample_id"].tolist() == [0, 1, 2] * 2
    (path.parent / "step-000020.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(RunFormatError, match="step-000020.parquet: not a readable parquet file"):
        run.eval_rollouts("policy")


def test_rollouts_refuse_bad_rows(new_run):
    writer = new_run({"policy": "policy"})
    with pytest.raises(ValueError, match="column 'step' has values other than 3"):
        writer.write_rollouts("policy", 3, [{"step": 4, "reward": 1.0}])
    with pytest.raises(ValueError, match="column 'logits' cannot be stored in parquet"):
        writer.write_rollouts("policy", 3, [{"reward": 1.0, "logits": object()}])
    with pytest.raises(ValueError, match="no rows"):
        writer.write_rollouts("policy", 3, [])
    assert Run.open(writer.path).rollouts().empty


def test_analysis_cache_round_trip(new_run):
    run = Run.open(new_run({"reward": "reward"}).path)
    key = analysis_key("probes", {"layers": [0, 1], "concept": "sentiment"}, ["reward/final"])
    assert run.load_analysis(key) is None
    df = pd.DataFrame({"layer": [0, 1], "concept": ["sentiment"] * 2, "accuracy": [0.5, 0.9]})
    run.save_analysis(key, df, {"threshold": 0.1, "nan": float("nan")})
    loaded_df, meta = run.load_analysis(key)
    pd.testing.assert_frame_equal(loaded_df, df)
    assert meta == {"threshold": 0.1, "nan": None}
    assert (run.path / "analyses" / f"{key}.parquet").is_file()
    folder = run.analysis_dir(key)
    assert folder == run.path / "analyses" / key and folder.is_dir()
    assert json.loads((run.path / "analyses" / f"{key}.json").read_text())["threshold"] == 0.1


def test_analysis_key_is_stable_and_sensitive():
    a = analysis_key("probes", {"b": 1, "a": [1, 2]}, ["reward/final"])
    assert a == analysis_key("probes", {"a": [1, 2], "b": 1}, ("reward/final",))
    assert a.startswith("probes-") and len(a) == len("probes-") + 12
    assert a != analysis_key("probes", {"b": 2, "a": [1, 2]}, ["reward/final"])
    assert a != analysis_key("probes", {"b": 1, "a": [1, 2]}, ["reward/step-000050"])
    with pytest.raises(ValueError, match="JSON-serialisable"):
        analysis_key("probes", {"x": object()}, [])
