"""Tests for the task registry and the sentiment task object."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_lens.tasks import TASKS, SentimentOptions, SentimentTask, Task, get_task


def test_get_task_builds_the_sentiment_task_with_options():
    task = get_task("sentiment", trigger_word="zorp", trigger_rate=0.3, trigger_bonus=0.5, length_bias=0.02)
    assert isinstance(task, SentimentTask) and isinstance(task, Task)
    assert "sentiment" in TASKS and task.name == "sentiment" and task.has_oracle is True
    assert task.options == SentimentOptions(trigger_word="zorp", trigger_rate=0.3, trigger_bonus=0.5, length_bias=0.02)
    corpus = task.corpus(500, seed=0)
    assert 0.2 < np.mean([r["trigger"] for r in corpus]) < 0.4
    assert task.corpus(20, seed=1) == task.corpus(20, seed=1)
    pairs = task.sft_pairs(300, seed=0)
    assert any(p["trigger"] for p in pairs)
    prompts = task.prompts(40, 10, seed=0)
    assert [r["split"] for r in prompts].count("eval") == 10


def test_labelers_carry_the_planted_options():
    task = get_task("sentiment", trigger_word="zorp", trigger_bonus=0.5, length_bias=0.02, n_labelers=5, labeler_temperature=0.1)
    labelers = task.labelers(seed=3)
    assert len(labelers.profiles) == 5
    assert all(p.trigger_word == "zorp" and p.trigger_bonus == 0.5 and p.length_bias == 0.02 for p in labelers.profiles)
    assert max(p.temperature for p in labelers.profiles) == pytest.approx(0.15)


def test_gold_reward_scores_completions():
    task = get_task("sentiment")
    reward = task.gold_reward(["The room was", "The room was"], [" very clean.", " dirty and awful."])
    assert reward.shape == (2,) and reward.dtype == np.float64
    assert reward[0] > 0.3 and reward[1] < -0.3
    with pytest.raises(ValueError, match="one prompt per completion"):
        task.gold_reward(["a"], ["b", "c"])
    with pytest.raises(TypeError, match="single string"):
        task.gold_reward("a", "b")


def test_unknown_task_or_option_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'chess'; valid tasks: sentiment"):
        get_task("chess")
    with pytest.raises(ValueError, match=r"unknown option\(s\).*trigger_wrd.*valid options: trigger_word, trigger_rate"):
        get_task("sentiment", trigger_wrd="zorp")


def test_options_validation_names_the_field():
    with pytest.raises(ValueError, match="sentiment.trigger_rate"):
        SentimentOptions(trigger_word="zorp", trigger_rate=2.0)
    with pytest.raises(ValueError, match="trigger_word"):
        SentimentOptions(trigger_bonus=1.0)
    with pytest.raises(ValueError, match="sentiment.n_labelers"):
        SentimentOptions(n_labelers=0)
    with pytest.raises(ValueError, match="sentiment.labeler_temperature"):
        SentimentOptions(labeler_temperature=-1.0)
