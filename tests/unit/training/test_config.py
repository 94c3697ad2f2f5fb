"""Recipes load into validated frozen configs; overrides and errors name the field."""

from __future__ import annotations

import dataclasses

import pytest

from rlhf_lens.cli import main
from rlhf_lens.training.config import ConfigError, LMStageConfig, PolicyStageConfig, apply_overrides, from_dict, load_recipe, to_dict
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
        ("stages.sft.lr=1.5", r"stages.sft.lr: expected a number in \(0, 1\), got 1.5 \(float\)"),
        ('model.arch="mamba"', r"model.arch: expected one of 'gpt2', 'llama', 'gpt_neox', got 'mamba' \(str\)"),
        ("model.n_head=3", r"model.d_model \(128\) must be divisible by model.n_head \(3\)"),
        ("model.nlayers=2", r"model: unknown field\(s\) \['nlayers'\]"),
        ("stages.dpo.steps=2", r"no stage named 'dpo'"),
        ("steps", r"expected key=value"),
        ('stages.policy.algorithm="a2c"', r"stages.policy.algorithm: expected one of 'ppo', 'grpo', 'rloo', 'dpo', 'best_of_n'"),
        ("stages.policy.kl_target=0", r"stages.policy.kl_target: expected a positive number, got 0 \(int\)"),
        ("stages.policy.grad_clip=0", r"stages.policy.grad_clip: expected a positive number"),
        ("stages.policy.minibatches=3", r"stages.policy.batch_size \(16\) must be divisible by minibatches \(3\)"),
        ("stages.policy.warmup_steps=20", r"stages.policy.warmup_steps must be in \[0, steps\)"),
        ("stages.reward.save_every=-1", r"stages.reward.save_every: expected an integer from 0 to 1,000,000,000, got -1 \(int\)"),
        ("stages.policy.best_of=[]", r"stages.policy.best_of must list at least one n"),
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


POSITIVE = "a positive integer up to 1,000,000,000"


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.base.steps=1e30", f"stages.base.steps: expected {POSITIVE}, got 1e+30 (float)"),
        ("stages.base.steps=" + "1" + "0" * 30, f"stages.base.steps: expected {POSITIVE}, got 1{'0' * 30} (int)"),
        ('stages.base.lr="abc"', "stages.base.lr: expected a number in (0, 1), got 'abc' (str)"),
        ("stages.sft.lr=nan", "stages.sft.lr: expected a number in (0, 1), got nan (float)"),
        ("stages.base.steps=true", f"stages.base.steps: expected {POSITIVE}, got true (bool)"),
        ("seed=-5", "seed: expected a non-negative integer below 2**32 (0 to 4,294,967,295), got -5 (int)"),
        ("seed=4294967296", "seed: expected a non-negative integer below 2**32 (0 to 4,294,967,295), got 4294967296 (int)"),
        ('stages.reward.center="yes"', "stages.reward.center: expected true or false, got 'yes' (str)"),
        ("stages.policy.adaptive_kl=1", "stages.policy.adaptive_kl: expected true or false, got 1 (int)"),
        ("model.n_layer=2.5", f"model.n_layer: expected {POSITIVE}, got 2.5 (float)"),
        ("stages.sft.batch_size=-3", f"stages.sft.batch_size: expected {POSITIVE}, got -3 (int)"),
        ("stages.policy.clip_range=-0.2", "stages.policy.clip_range: expected a positive number, got -0.2 (float)"),
        ("stages.policy.best_of=[1, 0]", f"stages.policy.best_of[1]: expected {POSITIVE}, got 0 (int)"),
        ("stages.policy.best_of=4", "stages.policy.best_of: expected an array, got 4 (int)"),
        ('stages.policy.device="gpu"', "stages.policy.device: expected one of 'auto', 'cpu', 'cuda', got 'gpu' (str)"),
        ("stages.policy.init_from=3", "stages.policy.init_from: expected a string, got 3 (int)"),
        ("stages.reward.heldout_fraction=inf", "stages.reward.heldout_fraction: expected a number in (0, 1), got inf (float)"),
        ("data.eval_prompts=0", f"data.eval_prompts: expected {POSITIVE}, got 0 (int)"),
        ("name=7", "name: expected a string, got 7 (int)"),
    ],
)
def test_values_of_the_wrong_type_or_range_are_refused_naming_the_dotted_field(override, message):
    with pytest.raises(ConfigError) as refused:
        load_recipe(QUICK_RECIPE, [override])
    assert str(refused.value) == f"{QUICK_RECIPE}: {message}"


def test_fields_are_stored_as_their_annotated_types():
    stage = PolicyStageConfig(weight_decay=0, best_of=[1, 4])
    assert type(stage.weight_decay) is float and stage.best_of == (1, 4)
    with pytest.raises(ConfigError, match=r"^stages.sft.steps: expected a positive integer"):
        LMStageConfig(kind="sft", steps=True)
    with pytest.raises(ConfigError, match=r"^stages.base.kind: expected one of 'base', 'sft', got 'reward' \(str\)"):
        LMStageConfig(kind="reward", name="base")


@pytest.mark.parametrize(
    "override, field",
    [
        ("stages.base.steps=1e30", "stages.base.steps"),
        ('stages.base.lr="abc"', "stages.base.lr"),
        ("stages.base.steps=true", "stages.base.steps"),
        ("seed=-5", "seed"),
    ],
)
def test_cli_refuses_a_bad_value_in_one_line_and_writes_nothing(override, field, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(QUICK_RECIPE), "--out", str(out), "--set", override])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("rlhf-lens train: error: ") and f" {field}: expected " in err, err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "override, named",
    [
        ('stages.reward.feedback="{bad}"', "bad.jsonl:2"),
        ('model.base_model="{folder}"', "pytorch_model.bin"),
    ],
)
def test_cli_reads_the_files_a_recipe_names_before_the_run_folder_exists(override, named, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "rating", "prompt": "p", "completion": "c", "rating": 3}\n{"kind": "rating", "prompt": "p"}\n')
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"a pickle, never opened")
    out = tmp_path / "run"
    code = main(["train", str(QUICK_RECIPE), "--out", str(out), "--set", override.format(bad=bad, folder=folder)])
    err = capsys.readouterr().err
    assert code == 1 and named in err and "Traceback" not in err, err
    assert not out.exists()
