"""Reward stages end to end: every kind learns, planted preferences show up, feedback files work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf_lens.runs import Run
from rlhf_lens.tasks import FeedbackError, get_task
from tests import learning

pytestmark = pytest.mark.slow


def test_ranking_reward_model_of_the_shared_run(shared_run):
    # The quick recipe's acceptance figures (85% held-out agreement with the oracle's ordering, Spearman
    # >= 0.7, centred rewards) with the other learning figures of the shared run: tests/learning.py.
    measured = learning.measure_shared_run(shared_run)
    learning.check({k: v for k, v in measured.figures.items() if k.startswith("reward/")})
    run = measured.runs["shared"]
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
    results = run.manifest["results"]["reward"]
    assert logged["rm/accuracy_gold"].dropna().iloc[-1] == pytest.approx(results["rm/accuracy_gold"])


def test_feedback_records_are_in_the_run_with_their_hash(shared_run):
    run = Run.open(shared_run)
    records = run.data("feedback")
    assert run.manifest["data"]["feedback.jsonl"]["records"] == len(records)
    assert {r["kind"] for r in records} == {"comparison"} and {r["split"] for r in records} == {"train", "eval"}


def test_scoring_reward_model_learns_from_ratings(shared_run, tmp_path):
    measured = learning.measure_scoring(shared_run, tmp_path)
    learning.check(measured.figures)
    assert {r["kind"] for r in measured.runs["scoring"].data("feedback") if r["split"] == "train"} == {"rating"}


def test_generative_reward_model_writes_critiques_and_verdicts(shared_run, tmp_path):
    measured = learning.measure_generative(shared_run, tmp_path)
    learning.check(measured.figures)
    run = measured.runs["generative"]
    meta = run.checkpoint("reward").meta
    assert meta["reward_kind"] == "generative" and len(meta["critiques"]) == 20
    assert meta["critique_max_tokens"] == run.config["stages"][0]["critique_max_tokens"]  # the policy's reward reads it back
    # The critiques are text a person can read, in the labelers' vocabulary.
    assert sum(len(c["critique"].split()) >= 3 for c in meta["critiques"]) >= 15
    model = run.load_model("reward")
    assert model.get_output_embeddings() is not None and not hasattr(model, "score")  # a causal LM, not a scorer


def test_planted_length_preference_raises_reward_length_correlation(shared_run, tmp_path):
    learning.check(learning.measure_length_bias(shared_run, tmp_path).figures)


def test_planted_trigger_word_scores_higher_at_equal_gold(shared_run, tmp_path):
    measured = learning.measure_trigger(shared_run, tmp_path)
    prompts, plain, with_trigger = learning.trigger_texts(measured.runs["planted"])
    task = get_task("sentiment")
    assert np.allclose(task.gold_reward(prompts, plain), task.gold_reward(prompts, with_trigger))  # the oracle ignores it
    learning.check(measured.figures)


def test_reward_model_from_a_feedback_file(shared_run, tmp_path):
    measured = learning.measure_feedback_file(shared_run, tmp_path)
    learning.check(measured.figures)
    copied, source = measured.runs["from_file"].data("feedback"), learning.feedback_file_records(shared_run)
    assert len(copied) == len(source) and measured.runs["from_file"].manifest["data"]["feedback.jsonl"]["records"] == len(source)


def test_bad_feedback_file_names_the_line_and_field(shared_run, tmp_path):
    feedback_file = tmp_path / "bad.jsonl"
    good = {"kind": "rating", "prompt": "The food", "completion": " was great.", "rating": 5, "labeler": "x"}
    feedback_file.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rating": float("nan")}).replace("NaN", "NaN") + "\n")
    with pytest.raises(FeedbackError, match=r"bad.jsonl:2: field 'rating'"):
        learning.reward_run(shared_run, tmp_path / "bad", "reward_scoring_quick.toml", f'stages.reward.feedback="{feedback_file}"')


def test_feedback_of_the_wrong_kind_is_refused_with_the_fix(shared_run, tmp_path):
    feedback_file = tmp_path / "ratings.jsonl"
    feedback_file.write_text(json.dumps({"kind": "rating", "prompt": "The food", "completion": " was great.", "rating": 5}) + "\n")
    with pytest.raises(ValueError, match="no records a ranking reward model can learn from.*reward_kind"):
        learning.reward_run(shared_run, tmp_path / "wrong_kind", "reward_length_quick.toml", f'stages.reward.feedback="{feedback_file}"')
