"""The same code path trains GPT-2, Llama and GPT-NeoX configs, a local HF folder and another run's checkpoint."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rlhf_lens.runs import Run, sha256_file
from rlhf_lens.training.config import load_recipe
from rlhf_lens.training.pipeline import train
from tests.conftest import QUICK_RECIPE

pytestmark = pytest.mark.slow

SMALL = [
    "model.n_layer=2",
    "model.d_model=64",
    "model.vocab_size=400",
    "data.corpus_size=1500",
    "data.sft_size=300",
    "data.train_prompts=16",
    "data.eval_prompts=8",
    "stages.base.steps=25",
    "stages.base.warmup_steps=2",
    "stages.base.eval_every=0",
    "stages.sft.steps=5",
    "stages.sft.warmup_steps=1",
    "stages.sft.eval_every=0",
    "stages.sft.eval_samples=4",
    "stages.sft.max_new_tokens=8",
]


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_other_architectures_train_base_and_sft(arch, tmp_path):
    path = train(load_recipe(QUICK_RECIPE, SMALL + [f"model.arch={arch}"]), tmp_path / arch, quiet=True)
    run = Run.open(path)
    model = run.load_model("sft")
    assert model.config.model_type == arch
    base = run.manifest["results"]["base"]
    assert base["eval/perplexity"] < base["start_eval/perplexity"] / 2


def test_local_hf_folder_as_base_model(tmp_path):
    first = train(load_recipe(QUICK_RECIPE, SMALL + ["model.arch=llama"]), tmp_path / "first", quiet=True)
    folder = Run.open(first).checkpoint("base").path
    recipe = load_recipe(QUICK_RECIPE, SMALL + [f'model.base_model="{folder}"', "stages.base.steps=3"])
    second = Run.open(train(recipe, tmp_path / "second", quiet=True))
    assert second.load_model("base").config.model_type == "llama"
    # It continued from the folder's weights: the start perplexity is the first run's end, not an untrained model's.
    first_end = Run.open(first).manifest["results"]["base"]["eval/perplexity"]
    assert second.manifest["results"]["base"]["start_eval/perplexity"] < 2 * first_end


def test_stage_initialised_from_another_runs_checkpoint(shared_run, tmp_path):
    spec = f"{shared_run}:sft/final"
    recipe = load_recipe(QUICK_RECIPE, SMALL)
    raw_sft = [s for s in recipe.stages if s.kind == "sft"]
    recipe = replace(recipe, stages=(replace(raw_sft[0], init_from=spec, steps=3, warmup_steps=0),))
    run = Run.open(train(recipe, tmp_path / "continued", quiet=True))
    (stage,) = run.stages()
    assert stage.init_from["spec"] == spec
    assert stage.init_from["sha256"] == sha256_file(Run.open(shared_run).checkpoint("sft").path / "model.safetensors")
    assert run.load_model("sft").config.n_layer == 4  # the shared run's architecture, not [model]'s
