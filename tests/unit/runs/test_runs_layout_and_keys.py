"""Layout names, checkpoint tags, the metric key table and the TRL mapping."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rlhf_lens.runs import METRIC_KEYS, TRL_TO_OURS, checkpoint_tag, tag_step
from rlhf_lens.runs.atomic import atomic_write_json, maybe_crash_after
from rlhf_lens.runs.layout import validate_name


def test_checkpoint_tags():
    assert checkpoint_tag(50) == "step-000050"
    assert checkpoint_tag(1234567) == "step-1234567"
    assert tag_step("step-000050") == 50 and tag_step("final") is None
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="non-negative int"):
            checkpoint_tag(bad)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "..", "-x", "x" * 129, "a b"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValueError, match="is not allowed"):
        validate_name("stage name", name)


def test_metric_key_table():
    assert METRIC_KEYS["objective"] == ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy")
    assert "rm/spearman_gold" in METRIC_KEYS["reward_model"] and "eval/perplexity" in METRIC_KEYS["lm"]
    all_keys = [k for keys in METRIC_KEYS.values() for k in keys]
    assert len(all_keys) == len(set(all_keys)) == 44
    assert "kl_coef" not in TRL_TO_OURS and "eval/gold_mean" in METRIC_KEYS["policy_extra"]
    assert TRL_TO_OURS["eval_loss"] == "eval/loss"
    assert TRL_TO_OURS["objective/kl"] == "objective/kl" and TRL_TO_OURS["rewards/chosen"] == "rewards/chosen"
    assert TRL_TO_OURS["reward_std"] == "reward_std" and TRL_TO_OURS["loss"] == "loss"
    assert set(TRL_TO_OURS.values()) <= set(all_keys)
    assert "rm/accuracy" not in TRL_TO_OURS  # ours only: TRL never logs it under that name


def test_crash_point_only_fires_for_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_LENS_CRASH_AFTER", "other.json")
    atomic_write_json(tmp_path / "meta.json", {"a": 1})  # would not return if it fired
    maybe_crash_after(tmp_path / "meta.json")
    code = "import sys; from rlhf_lens.runs.atomic import atomic_write_json as w; w(sys.argv[1], {}); print('alive')"
    env = dict(os.environ, RLHF_LENS_CRASH_AFTER="meta.json", PYTHONPATH=str(__import__("pathlib").Path(__file__).resolve().parents[3]))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "sub" / "meta.json")], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9 and "alive" not in proc.stdout
    assert (tmp_path / "sub" / "meta.json").read_text() == "{}\n"  # in place before the kill
