"""Two processes under torchrun (gloo) compute what one process computes for the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlhf_lens.runs import Run
from tests.conftest import REPO

pytestmark = pytest.mark.slow

KEYS = ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/scores", "policy/approxkl_avg", "val/ratio")


def run_policy(shared_run, out, nproc: int) -> Run:
    overrides = [
        f'stages.policy.init_from="{shared_run}:sft/final"',
        f'stages.policy.reward_from="{shared_run}:reward/final"',
        "data.corpus_size=300",
        "data.sft_size=50",
        "data.train_prompts=64",
        "data.eval_prompts=8",
        "stages.policy.eval_prompts=8",
        "stages.policy.steps=3",
        "stages.policy.batch_size=8",
        "stages.policy.minibatches=2",
        "stages.policy.epochs=2",
        "stages.policy.eval_every=0",
        "stages.policy.log_every=3",
        'stages.policy.device="cpu"',
    ]
    args = ["train", str(REPO / "training" / "ppo_quick.toml"), "--out", str(out), "--quiet"] + [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if nproc == 1:
        command = [sys.executable, "-m", "rlhf_lens.cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "rlhf_lens.cli", *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return Run.open(out)


def test_two_gloo_processes_match_one_process(shared_run, tmp_path):
    one = run_policy(shared_run, tmp_path / "one", 1)
    two = run_policy(shared_run, tmp_path / "two", 2)
    curve_one = one.metrics("policy").to_dict("records")
    curve_two = two.metrics("policy").to_dict("records")
    assert [m["step"] for m in curve_two] == [1, 2, 3]
    for a, b in zip(curve_one, curve_two):
        for key in KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), (a["step"], key, a[key], b[key])
    # rank 0 wrote every process's samples, in the same order as one process
    r1, r2 = one.rollouts("policy"), two.rollouts("policy")
    assert list(r2["completion"]) == list(r1["completion"]) and list(r2["prompt_id"]) == list(r1["prompt_id"])
    assert json.dumps(two.manifest["stages"][0]["status"]) == '"done"'
