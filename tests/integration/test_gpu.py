"""The policy stage on CUDA with bf16 autocast (runs where a GPU is present; skipped elsewhere)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lens.runs import Run
from rlhf_lens.training.config import load_recipe
from rlhf_lens.training.pipeline import train
from tests.conftest import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_policy_stage_trains_on_cuda_in_bf16(shared_run, tmp_path, algorithm):
    overrides = [
        f'stages.policy.init_from="{shared_run}:sft/final"',
        f'stages.policy.reward_from="{shared_run}:reward/final"',
        "data.corpus_size=300",
        "data.sft_size=50",
        "data.train_prompts=64",
        "data.eval_prompts=8",
        "stages.policy.eval_prompts=8",
        "stages.policy.steps=3",
        "stages.policy.batch_size=4",
        'stages.policy.device="cuda"',
        "stages.policy.bf16=true",
    ]
    run = Run.open(train(load_recipe(REPO / "training" / f"{algorithm}_quick.toml", overrides), tmp_path / algorithm, quiet=True))
    before = Run.open(shared_run).load_model("sft").state_dict()
    after = run.load_model("policy").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(v.dtype == torch.float32 for v in after.values())  # bf16 autocast, fp32 weights
    last = run.metrics("policy").to_dict("records")[-1]
    assert math.isfinite(last["loss/policy_avg"])
