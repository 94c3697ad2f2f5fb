"""Recipes load into validated frozen configs; overrides and errors name the field."""

from __future__ import annotations

import dataclasses

import pytest

from rlhf_lens.training.config import ConfigError, apply_overrides, from_dict, load_recipe, to_dict
from tests.conftest import QUICK_RECIPE, REPO


def test_recipes_in_training_folder_all_load():
    recipes = sorted((REPO / "training").glob("*.toml"))
    assert len(recipes) >= 2
    for path in recipes:
        config = load_recipe(path)
        assert config.stages, path


def test_overrides_reach_stage_and_model_fields():
    config = load_recipe(
        QUICK_RECIPE, ["stages.sft.steps=7", "stages.sft.warmup_steps=2", "model.n_layer=2", "seed=3", 'task.options.trigger_word="zesty"']
    )
    assert config.stage("sft").steps == 7
    assert config.model.n_layer == 2 and config.seed == 3
    assert config.task.options["trigger_word"] == "zesty"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.n_layer = 5


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.sft.lr=1.5", r"stages.sft.lr must be in \(0, 1\), got 1.5"),
        ('model.arch="mamba"', r"model.arch must be one of"),
        ("model.n_head=3", r"model.d_model \(128\) must be divisible by model.n_head \(3\)"),
        ("model.nlayers=2", r"model: unknown field\(s\) \['nlayers'\]"),
        ("stages.dpo.steps=2", r"no stage named 'dpo'"),
        ("steps", r"expected key=value"),
        ('stages.policy.algorithm="a2c"', r"stages.policy.algorithm must be one of"),
        ("stages.policy.kl_target=0", r"stages.policy.kl_target must be > 0, got 0"),
        ("stages.policy.grad_clip=0", r"stages.policy.grad_clip must be > 0"),
        ("stages.policy.minibatches=3", r"stages.policy.batch_size \(16\) must be divisible by minibatches \(3\)"),
        ("stages.policy.warmup_steps=20", r"stages.policy.warmup_steps must be in \[0, steps\)"),
        ("stages.reward.save_every=-1", r"stages.reward.warmup_steps, eval_every and save_every must be >= 0"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(QUICK_RECIPE, [override])


def test_missing_recipe_and_unknown_stage_kind():
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(REPO / "training" / "nope.toml")
    with pytest.raises(ConfigError, match=r"stages\[0\].kind must be one of"):
        from_dict({"stages": [{"kind": "magic"}]})
    with pytest.raises(ConfigError, match="repeated"):
        from_dict({"stages": [{"kind": "base"}, {"kind": "base"}]})


def test_resolved_config_round_trips_through_dict():
    config = load_recipe(QUICK_RECIPE)
    raw = to_dict(config)
    assert from_dict(apply_overrides(raw, [])) == config


def test_policy_options_that_would_be_silently_ignored_are_refused():
    with pytest.raises(ConfigError, match="adaptive_kl adapts the KL penalty in the reward of ppo or rloo; grpo has none"):
        load_recipe(REPO / "training" / "grpo_quick.toml", ["stages.policy.adaptive_kl=true"])
    with pytest.raises(ConfigError, match="group_size must be >= 2 for rloo"):
        load_recipe(REPO / "training" / "rloo_quick.toml", ["stages.policy.group_size=1"])
