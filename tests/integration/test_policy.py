"""Policy stages end to end on the shared run: every algorithm trains and logs what DESIGN.md lists,
resume is exact, and bad rewards or prompts have clear outcomes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_lens.runs import Run
from rlhf_lens.training.config import load_recipe
from rlhf_lens.training.losses import best_of_n_kl
from rlhf_lens.training.pipeline import train
from rlhf_lens.training.policy import online
from rlhf_lens.training.policy import setup as policy_setup
from rlhf_lens.training.policy.reward_source import RewardError, RewardSource
from tests import learning
from tests.conftest import REPO

pytestmark = pytest.mark.slow

ROLLOUT_COLUMNS = {
    "stage",
    "step",
    "sample_id",
    "prompt_id",
    "prompt",
    "completion",
    "prompt_ids",
    "completion_ids",
    "logprobs",
    "ref_logprobs",
    "kl_per_token",
    "seq_kl",
    "reward",
    "reward_components",
    "gold_reward",
    "length",
    "finished",
}


def policy_config(shared_run, recipe: str, *overrides: str):
    sources = [f'stages.policy.init_from="{shared_run}:sft/final"', f'stages.policy.reward_from="{shared_run}:reward/final"']
    return load_recipe(REPO / "training" / recipe, learning.POLICY_SMALL + sources + list(overrides))


def policy_run(shared_run, out, recipe: str, *overrides: str) -> Run:
    return learning.policy_run(shared_run, out, recipe, *overrides)


def weights_changed(run: Run, shared_run) -> bool:
    before = Run.open(shared_run).load_model("sft").state_dict()
    after = run.load_model("policy").state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_ppo_trains_policy_and_value_model_and_writes_reward_logs(shared_run, tmp_path):
    run = policy_run(
        shared_run,
        tmp_path / "ppo",
        "ppo_quick.toml",
        "stages.policy.steps=4",
        "stages.policy.batch_size=8",
        "stages.policy.save_every=2",
        "stages.policy.log_every=2",
        "stages.policy.eval_every=0",
    )
    assert weights_changed(run, shared_run)
    assert [c.tag for c in run.checkpoints("policy")] == ["step-000002", "final"]
    value = run.load_value_model("policy")
    assert value.config.num_labels == 1
    logged = run.metrics("policy").to_dict("records")
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    for key in (
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "objective/entropy",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio",
        "gold/mean",
        "gold/std",
    ):
        assert all(math.isfinite(m[key]) for m in logged), key
    rollouts = run.rollouts("policy")
    assert ROLLOUT_COLUMNS <= set(rollouts.columns)
    assert sorted(rollouts["step"].unique()) == [2, 4] and len(rollouts) == 16
    for _, row in rollouts.iterrows():
        assert len(row["logprobs"]) == len(row["ref_logprobs"]) == len(row["kl_per_token"]) == len(row["completion_ids"]) == row["length"]
        assert row["seq_kl"] == pytest.approx(float(np.sum(row["kl_per_token"])), abs=1e-4)
        assert row["reward"] == pytest.approx(row["reward_components"]["score"] + row["reward_components"]["missing_eos_penalty"], abs=1e-5)
    assert rollouts["sample_id"].is_unique
    # The evaluation samples: the starting policy (step 0) and the last step, on the same prompts and seeds.
    evals = run.eval_rollouts("policy")
    assert sorted(evals["step"].unique()) == [0, 4]
    start, end = (evals.query(f"step == {s}") for s in (0, 4))
    assert list(start["prompt_id"]) == list(end["prompt_id"]) and len(start) == run.config["stages"][-1]["eval_prompts"]
    assert np.abs(np.concatenate(start["kl_per_token"].tolist())).max() < 1e-4  # the starting policy is its reference
    assert logged[-1]["eval/gold_mean"] == pytest.approx(end["gold_reward"].mean(), abs=1e-5)
    assert run.manifest["results"]["policy"]["start_eval/gold_mean"] == pytest.approx(start["gold_reward"].mean(), abs=1e-5)


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_group_baselines_train(shared_run, tmp_path, algorithm):
    run = policy_run(
        shared_run,
        tmp_path / algorithm,
        f"{algorithm}_quick.toml",
        "stages.policy.steps=3",
        "stages.policy.batch_size=4",
        "stages.policy.log_every=3",
        "stages.policy.eval_every=0",
    )
    assert weights_changed(run, shared_run)
    last = run.metrics("policy").to_dict("records")[-1]
    keys = (
        ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "clip_ratio/region_mean")
        if algorithm == "grpo"
        else ("objective/kl", "objective/scores", "objective/rlhf_reward")
    )
    assert all(math.isfinite(last[k]) for k in keys)
    rollouts = run.rollouts("policy")
    assert len(rollouts) == 4 * 4 and (rollouts.groupby("prompt_id").size() == 4).all()  # whole groups of group_size


@pytest.mark.parametrize("measure", [learning.measure_ppo, learning.measure_grpo], ids=["ppo", "grpo"])
def test_ppo_and_grpo_raise_the_gold_reward_of_eval_completions(shared_run, tmp_path, measure):
    measured = measure(shared_run, tmp_path)
    learning.check(measured.figures)  # gain in gold reward over 2 combined standard errors
    (run,) = measured.runs.values()
    assert math.isfinite(run.manifest["results"]["policy"]["eval/kl"]) and run.manifest["results"]["policy"]["eval/kl"] > 0


def test_dpo_improves_heldout_preference_accuracy(shared_run, tmp_path):
    measured = learning.measure_dpo(shared_run, tmp_path)
    learning.check(measured.figures)
    run = measured.runs["dpo"]
    assert run.manifest["results"]["policy"]["start_eval/rewards/accuracies"] == 0.5  # the implicit reward is 0 before training
    last = run.metrics("policy").to_dict("records")[-1]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(last)
    assert weights_changed(run, shared_run)


def test_best_of_n_logs_each_n_with_the_analytic_kl(shared_run, tmp_path):
    measured = learning.measure_best_of_n(shared_run, tmp_path)
    learning.check(measured.figures)  # scores rise with n, and the gold reward of n = 16 beats n = 1
    run = measured.runs["bon"]
    logged = {m["step"]: m for m in run.metrics("policy").to_dict("records")}
    assert sorted(logged) == [1, 4, 16]
    for n, m in logged.items():
        assert m["objective/kl"] == pytest.approx(best_of_n_kl(n))
    shard = run.rollouts("policy")
    assert sorted(shard["step"].unique()) == [1, 4, 16] and len(shard) == 3 * 16
    assert run.manifest["results"]["policy"]["best_of_16/gold/mean"] == pytest.approx(logged[16]["gold/mean"])


@pytest.mark.parametrize(
    "recipe, extra",
    [
        ("grpo_quick.toml", []),
        ("ppo_quick.toml", ["stages.policy.adaptive_kl=true", "stages.policy.kl_target=0.5", "stages.policy.minibatches=2"]),
    ],
)
def test_resume_continues_exactly(shared_run, tmp_path, monkeypatch, recipe, extra):
    settings = [
        "stages.policy.steps=4",
        "stages.policy.batch_size=4",
        "stages.policy.save_every=2",
        "stages.policy.log_every=1",
        "stages.policy.eval_every=0",
    ]
    config = policy_config(shared_run, recipe, *settings, *extra)
    straight = Run.open(train(config, tmp_path / "straight", quiet=True))

    real = online.collect_rollout

    def crash_at_step_3(*args, **kwargs):
        if kwargs["step"] == 3:
            raise KeyboardInterrupt("simulated crash at step 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(online, "collect_rollout", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", quiet=True)
    monkeypatch.setattr(online, "collect_rollout", real)
    assert Run.open(tmp_path / "resumed").stage("policy").status == "failed"
    resumed = Run.open(train(config, tmp_path / "resumed", quiet=True, resume=True))

    a, b = straight.load_model("policy").state_dict(), resumed.load_model("policy").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if recipe.startswith("ppo"):  # the value model and the adaptive KL coefficient continue too
        va, vb = straight.load_value_model("policy").state_dict(), resumed.load_value_model("policy").state_dict()
        assert all(torch.equal(va[k], vb[k]) for k in va)
        kl_coefs = list(straight.metrics("policy")["kl_coef"])
        assert kl_coefs == list(resumed.metrics("policy")["kl_coef"]) and kl_coefs[-1] != kl_coefs[0]
    steps = list(resumed.metrics("policy")["step"])
    assert steps == [1, 2, 3, 4]  # the curve does not fork
    assert any(e.get("event") == "resume" and e.get("step") == 2 for e in resumed.events().to_dict("records"))
    straight_loss = list(straight.metrics("policy")["loss/policy_avg"])
    resumed_loss = list(resumed.metrics("policy")["loss/policy_avg"])
    assert straight_loss == resumed_loss
    start = "start_eval/gold_mean"  # measured before step 1, kept through the resume
    assert resumed.manifest["results"]["policy"][start] == straight.manifest["results"]["policy"][start]


def test_resume_refuses_a_different_recipe(shared_run, tmp_path):
    config = policy_config(
        shared_run, "grpo_quick.toml", "stages.policy.steps=1", "stages.policy.batch_size=2", "stages.policy.eval_every=0"
    )
    out = train(config, tmp_path / "run", quiet=True)
    other = policy_config(
        shared_run, "grpo_quick.toml", "stages.policy.steps=2", "stages.policy.batch_size=2", "stages.policy.eval_every=0"
    )
    with pytest.raises(ValueError, match=r"config.stages\[0\].steps \(run: 1, recipe: 2\)"):
        train(other, out, quiet=True, resume=True)


def fake_gold(monkeypatch, name, fn):
    monkeypatch.setattr(policy_setup, "gold_source", lambda task: RewardSource(name, fn))


def test_all_nan_rewards_stop_the_stage_and_never_reach_the_weights(shared_run, tmp_path, monkeypatch):
    fake_gold(monkeypatch, "all-nan", lambda prompts, completions: np.full(len(prompts), np.nan))
    config = policy_config(
        shared_run,
        "grpo_quick.toml",
        'stages.policy.reward_from="gold"',
        "stages.policy.max_bad_steps=2",
        "stages.policy.batch_size=2",
        "stages.policy.eval_every=0",
    )
    with pytest.raises(FloatingPointError, match="2 consecutive steps.*non-finite rewards.*last complete checkpoint is intact"):
        train(config, tmp_path / "nan", quiet=True)
    run = Run.open(tmp_path / "nan")
    assert run.stage("policy").status == "failed" and run.checkpoints("policy") == []
    skips = [e for e in run.events().to_dict("records") if e.get("event") == "nan_skip"]
    assert [(e["step"], e["what"]) for e in skips] == [(1, "reward"), (2, "reward")]


def test_a_reward_function_that_raises_names_itself(shared_run, tmp_path, monkeypatch):
    def broken(prompts, completions):
        raise ValueError("reward server unreachable")

    fake_gold(monkeypatch, "my-reward", broken)
    config = policy_config(shared_run, "grpo_quick.toml", 'stages.policy.reward_from="gold"', "stages.policy.batch_size=2")
    with pytest.raises(RewardError, match=r"the reward function \(my-reward\) raised ValueError: reward server unreachable"):
        train(config, tmp_path / "raises", quiet=True)


def test_prompts_longer_than_the_context_keep_their_last_tokens(shared_run, tmp_path):
    # The shared model's context is 96 tokens: with 90 new tokens a prompt may keep only 6.
    with pytest.warns(UserWarning, match="prompts are longer than the 6 tokens"):
        run = policy_run(
            shared_run,
            tmp_path / "long",
            "grpo_quick.toml",
            "stages.policy.max_new_tokens=90",
            "stages.policy.steps=1",
            "stages.policy.batch_size=2",
            "stages.policy.eval_prompts=2",
            "stages.policy.eval_every=0",
        )
    assert any(e.get("event") == "prompts_truncated" for e in run.events().to_dict("records"))
    rollouts = run.rollouts("policy")
    assert rollouts["prompt_ids"].map(len).max() <= 6
    assert (rollouts["length"] <= 90).all()
