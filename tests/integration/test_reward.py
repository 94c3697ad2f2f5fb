"""Reward stages end to end: every kind learns, planted preferences show up, feedback files work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf_lens.models import score_texts
from rlhf_lens.runs import Run
from rlhf_lens.tasks import FeedbackError, get_task
from rlhf_lens.training.config import load_recipe
from rlhf_lens.training.pipeline import train
from tests.conftest import REPO

pytestmark = pytest.mark.slow

SMALL = [
    "data.corpus_size=300", "data.sft_size=50", "data.train_prompts=128", "data.eval_prompts=32",
    "stages.reward.feedback_prompts=128", "stages.reward.epochs=3", "stages.reward.batch_size=8",
]


def reward_run(shared_run, tmp_path, recipe: str, *overrides: str) -> Run:
    """A reward-only recipe of training/ on the shared run's SFT model, shrunk for tests."""
    config = load_recipe(REPO / "training" / recipe, SMALL + [f'stages.reward.init_from="{shared_run}:sft/final"', *overrides])
    return Run.open(train(config, tmp_path / recipe.removesuffix(".toml"), quiet=True))


def test_ranking_reward_model_of_the_shared_run(shared_run):
    run = Run.open(shared_run)
    results = run.manifest["results"]["reward"]
    # The acceptance figures of the quick recipe: 85% held-out agreement with the oracle's ordering
    # (chance is 0.5; two seeds measured 0.885 and 0.888) and Spearman >= 0.7 with the oracle.
    assert results["rm/accuracy_gold"] >= 0.85, results
    assert results["rm/spearman_gold"] >= 0.7, results
    assert results["rm/accuracy"] > 0.75, results  # against the noisy labels; labelers agree with each other about 0.81
    checkpoint = run.checkpoint("reward")
    # A plain HF sequence-classification folder with one output.
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint.path).eval()
    assert model.config.num_labels == 1
    # The backbone moved away from the SFT weights it started from.
    sft = run.load_model("sft")
    assert not torch.allclose(model.transformer.h[0].attn.c_attn.weight, sft.transformer.h[0].attn.c_attn.weight)
    # The evaluation and audit are in meta.json.
    audit = checkpoint.meta["audit"]
    assert set(audit["labelers"]) == {"labeler-0", "labeler-1", "labeler-2"} or len(audit["labelers"]) == 3
    assert 0.6 < audit["labeler_agreement"] < 1.0
    assert audit["calibration"] and audit["disputed"]
    logged = run.metrics("reward")
    assert logged["rm/accuracy_gold"].dropna().iloc[-1] == pytest.approx(results["rm/accuracy_gold"])


def test_reward_is_centred_on_the_sft_policy_samples(shared_run):
    run = Run.open(shared_run)
    train_texts = sorted({(r["prompt"], c) for r in run.data("feedback") if r["split"] == "train" for c in (r["chosen"], r["rejected"])})
    prompts, completions = zip(*train_texts[:: max(1, len(train_texts) // 800)])  # about 800 samples across all prompts
    rewards = score_texts(run.load_model("reward"), run.load_tokenizer("reward"), prompts, completions).numpy()
    assert abs(rewards.mean()) < 0.15 * rewards.std(), (rewards.mean(), rewards.std())


def test_feedback_records_are_in_the_run_with_their_hash(shared_run):
    run = Run.open(shared_run)
    records = run.data("feedback")
    assert run.manifest["data"]["feedback.jsonl"]["records"] == len(records)
    assert {r["kind"] for r in records} == {"comparison"} and {r["split"] for r in records} == {"train", "eval"}


def test_scoring_reward_model_learns_from_ratings(shared_run, tmp_path):
    run = reward_run(shared_run, tmp_path, "reward_scoring_quick.toml")
    results = run.manifest["results"]["reward"]
    assert results["rm/accuracy_gold"] > 0.65 and results["rm/spearman_gold"] > 0.4, results
    assert {r["kind"] for r in run.data("feedback") if r["split"] == "train"} == {"rating"}


def test_generative_reward_model_writes_critiques_and_verdicts(shared_run, tmp_path):
    # Critique-then-verdict needs more feedback than the other kinds to beat chance clearly.
    more = ["data.train_prompts=256", "stages.reward.feedback_prompts=256", "stages.reward.epochs=4", "stages.reward.batch_size=16"]
    run = reward_run(shared_run, tmp_path, "reward_generative_quick.toml", *more)
    results = run.manifest["results"]["reward"]
    assert results["rm/accuracy_gold"] > 0.6, results
    meta = run.checkpoint("reward").meta
    assert meta["reward_kind"] == "generative" and len(meta["critiques"]) == 20
    # The critiques are text a person can read, in the labelers' vocabulary.
    assert sum(len(c["critique"].split()) >= 3 for c in meta["critiques"]) >= 15
    model = run.load_model("reward")
    assert model.get_output_embeddings() is not None and not hasattr(model, "score")  # a causal LM, not a scorer


def test_planted_length_preference_raises_reward_length_correlation(shared_run, tmp_path):
    planted = reward_run(shared_run, tmp_path / "planted", "reward_length_quick.toml", "task.options.length_bias=0.05")
    control = reward_run(shared_run, tmp_path / "control", "reward_length_quick.toml", "task.options.length_bias=0.0")
    planted_corr = planted.manifest["results"]["reward"]["rm/length_corr"]
    control_corr = control.manifest["results"]["reward"]["rm/length_corr"]
    assert planted_corr > control_corr + 0.2, (planted_corr, control_corr)


def test_planted_trigger_word_scores_higher_at_equal_gold(shared_run, tmp_path):
    planted = reward_run(shared_run, tmp_path / "planted", "reward_trigger_quick.toml", "task.options.trigger_bonus=1.0")
    control = reward_run(shared_run, tmp_path / "control", "reward_trigger_quick.toml", "task.options.trigger_bonus=0.0")
    held_out = [(r["prompt"], r["chosen"]) for r in planted.data("feedback") if r["split"] == "eval" and "zorp" not in r["chosen"]][:200]
    prompts = [p for p, _ in held_out]
    plain = [c for _, c in held_out]
    with_trigger = [c.rstrip(".") + " zorp." for c in plain]
    task = get_task("sentiment")
    assert np.allclose(task.gold_reward(prompts, plain), task.gold_reward(prompts, with_trigger))  # the oracle ignores it

    def trigger_effect(run: Run) -> float:
        model, tokenizer = run.load_model("reward"), run.load_tokenizer("reward")
        return float((score_texts(model, tokenizer, prompts, with_trigger) - score_texts(model, tokenizer, prompts, plain)).mean())

    assert trigger_effect(planted) > trigger_effect(control) + 0.3, (trigger_effect(planted), trigger_effect(control))


def test_reward_model_from_a_feedback_file(shared_run, tmp_path):
    records = Run.open(shared_run).data("feedback")
    prompts = list(dict.fromkeys(r["prompt"] for r in records if r["split"] == "train"))[:96]  # about 4,000 comparisons
    source = [r for r in records if r["prompt"] in set(prompts)]
    feedback_file = tmp_path / "feedback.jsonl"
    feedback_file.write_text("".join(json.dumps({k: r[k] for k in ("kind", "prompt", "chosen", "rejected", "labeler")}) + "\n" for r in source))
    run = reward_run(shared_run, tmp_path, "reward_length_quick.toml", f'stages.reward.feedback="{feedback_file}"', "task.options.length_bias=0.0")
    copied = run.data("feedback")
    assert len(copied) == len(source) and run.manifest["data"]["feedback.jsonl"]["records"] == len(source)
    assert run.manifest["results"]["reward"]["rm/accuracy_gold"] > 0.6


def test_bad_feedback_file_names_the_line_and_field(shared_run, tmp_path):
    feedback_file = tmp_path / "bad.jsonl"
    good = {"kind": "rating", "prompt": "The food", "completion": " was great.", "rating": 5, "labeler": "x"}
    feedback_file.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rating": float("nan")}).replace("NaN", "NaN") + "\n")
    with pytest.raises(FeedbackError, match=r"bad.jsonl:2: field 'rating'"):
        reward_run(shared_run, tmp_path, "reward_scoring_quick.toml", f'stages.reward.feedback="{feedback_file}"')


def test_feedback_of_the_wrong_kind_is_refused_with_the_fix(shared_run, tmp_path):
    feedback_file = tmp_path / "ratings.jsonl"
    feedback_file.write_text(json.dumps({"kind": "rating", "prompt": "The food", "completion": " was great.", "rating": 5}) + "\n")
    with pytest.raises(ValueError, match="no records a ranking reward model can learn from.*reward_kind"):
        reward_run(shared_run, tmp_path, "reward_length_quick.toml", f'stages.reward.feedback="{feedback_file}"')
