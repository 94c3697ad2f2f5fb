"""The quick recipe end to end: the base model learns, SFT ends its samples, the run is complete."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rlhf_lens.runs import Run
from tests import learning

pytestmark = pytest.mark.slow


BASE_SFT_WORK = {
    "model": {"n_layer": 4, "d_model": 128, "n_head": 4, "context": 96, "vocab_size": 800},
    "data": {"corpus_size": 12000, "sft_size": 3000},
    "base": {"steps": 260, "batch_size": 32, "eval_every": 130, "save_every": 0},
    "sft": {"steps": 120, "batch_size": 32, "eval_every": 60, "save_every": 0, "eval_samples": 64, "max_new_tokens": 48},
}
"""What base + SFT of the quick recipe compute, sized to take about a minute on 2 cores. Their time is a benchmark's
business (a loaded machine took 301.9 s): `benchmarks/budgets.py --only base_sft` prints it against the 90 s budget."""


def test_quick_recipe_base_and_sft_do_the_work_their_budget_was_set_for(shared_run):
    run = Run.open(shared_run)
    config, results = run.manifest["config"], run.manifest["results"]
    sections = {"model": config["model"], "data": config["data"]} | {s["name"]: s for s in config["stages"]}
    done = {part: {key: sections[part][key] for key in sizes} for part, sizes in BASE_SFT_WORK.items()}
    assert done == BASE_SFT_WORK, "base + SFT of the quick recipe changed size: time it with benchmarks/budgets.py --only base_sft"
    metrics = run.metrics()
    for stage in ("base", "sft"):
        work, rows = BASE_SFT_WORK[stage], metrics[metrics["stage"] == stage]
        # each step and each held-out evaluation ran once (nothing redone), and only the final checkpoint was written
        assert rows["step"].tolist() == list(range(1, work["steps"] + 1)), stage
        assert rows["eval/perplexity"].notna().sum() == work["steps"] // work["eval_every"], stage
        assert [c.tag for c in run.checkpoints(stage)] == ["final"], stage
        assert results[stage]["seconds"] >= 0, stage  # recorded for the benchmark, not bounded here
    # the SFT evaluation sampled at most 48 new tokens for each of its 64 prompts
    assert results["sft"]["max_new_tokens"] == 48 and 0 < results["sft"]["mean_length"] <= 48


def test_manifest_describes_stages_data_and_env(shared_run):
    run = Run.open(shared_run)
    assert [(s.name, s.kind, s.status) for s in run.stages()] == [
        ("base", "base", "done"),
        ("sft", "sft", "done"),
        ("reward", "reward", "done"),
        ("policy", "policy", "done"),
    ]
    manifest = run.manifest
    assert set(manifest["data"]) == {"corpus.jsonl", "sft.jsonl", "prompts.jsonl", "feedback.jsonl"}
    assert manifest["data"]["corpus.jsonl"]["records"] == manifest["config"]["data"]["corpus_size"]
    assert manifest["env"]["torch"] == torch.__version__
    assert [c.tag for c in run.checkpoints("sft")] == ["final"]


def test_base_model_learns_the_corpus_and_sft_samples_end_with_eos(shared_run):
    results = Run.open(shared_run).manifest["results"]["base"]
    assert results["start_eval/perplexity"] > 200, results  # an untrained model is near-uniform over ~800 tokens
    # perplexity falls over 10x, the loss by over 2 nats, and 90% of SFT samples end with EOS (also resampled
    # from the checkpoint on other seeds): tests/learning.py
    figures = learning.measure_shared_run(shared_run).figures
    learning.check({k: v for k, v in figures.items() if k.startswith(("base/", "sft/"))})


def test_metrics_log_uses_design_keys(shared_run):
    metrics = Run.open(shared_run).metrics()
    for stage, steps in (("base", 260), ("sft", 120)):
        rows = metrics[metrics["stage"] == stage]
        assert rows["step"].tolist() == list(range(1, steps + 1))
        assert rows["loss"].notna().all()
        assert rows["eval/perplexity"].notna().sum() == 2


def test_inspect_cli_describes_the_run(shared_run):
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_lens.cli", "inspect", str(shared_run)], capture_output=True, text=True, check=True
    ).stdout
    for expected in ("sentiment-quick", "base", "sft", "final", "corpus.jsonl", "perplexity", "eos_rate"):
        assert expected in out, expected


def test_run_json_is_valid_json_with_format(shared_run):
    manifest = json.loads((shared_run / "run.json").read_text())
    assert manifest["format"] == "rlhf-lens-run" and manifest["format_version"] == 1


TINY_RECIPE = """
name = "tiny-resume"
seed = 3
[data]
corpus_size = 400
sft_size = 60
train_prompts = 16
eval_prompts = 8
[model]
n_layer = 1
d_model = 32
n_head = 2
context = 48
vocab_size = 300
[[stages]]
kind = "base"
steps = 6
batch_size = 4
warmup_steps = 2
save_every = 3
eval_every = 0
[[stages]]
kind = "sft"
steps = 2
batch_size = 4
warmup_steps = 1
eval_every = 0
eval_samples = 4
max_new_tokens = 8
"""


def test_base_stage_resumes_exactly_from_its_step_checkpoint(tmp_path, monkeypatch):
    from rlhf_lens.training import loop
    from rlhf_lens.training.config import load_recipe
    from rlhf_lens.training.pipeline import train

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    config = load_recipe(recipe)
    straight = Run.open(train(config, tmp_path / "straight", quiet=True))

    real = loop.batch_indices

    def crash_at_step_5(n_items, batch_size, seed, step):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")
        return real(n_items, batch_size, seed, step)

    monkeypatch.setattr(loop, "batch_indices", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", quiet=True)
    monkeypatch.setattr(loop, "batch_indices", real)
    resumed = Run.open(train(config, tmp_path / "resumed", quiet=True, resume=True))
    for stage in ("base", "sft"):
        a, b = straight.load_model(stage).state_dict(), resumed.load_model(stage).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    assert list(resumed.metrics("base")["step"]) == [1, 2, 3, 4, 5, 6]
    assert list(resumed.metrics("base")["loss"]) == list(straight.metrics("base")["loss"])
