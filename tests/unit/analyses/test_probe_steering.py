"""Steering along a direction (rlhf_lens.analyses.probes.steering) on planted models: the reward model reads
dimension 0 after its final LayerNorm, so pushing along it moves the reward in its sign, and pushing along the
all-ones direction, which LayerNorm removes exactly, moves nothing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rlhf_lens import models
from rlhf_lens.analyses.probes.steering import steer_policy, steer_rewards, transformer_blocks
from tests.unit.analyses.reward_runs import PROMPTS, planted_scorer, word_tokenizer

D_MODEL = 16
COMPLETIONS = [" very great", " so awful", " great", " the food was awful", " zorp", " awful"]


def unit(index: int) -> np.ndarray:
    vector = np.zeros(D_MODEL, dtype=np.float32)
    vector[index] = 1.0
    return vector


def test_pushing_along_the_read_out_dimension_moves_the_reward_in_its_sign():
    model, tokenizer = planted_scorer(), word_tokenizer()
    up = steer_rewards(model, tokenizer, PROMPTS, COMPLETIONS, unit(0), layer=0, concept="dim 0", expected_sign=1)
    down = steer_rewards(model, tokenizer, PROMPTS, COMPLETIONS, -unit(0), layer=0, concept="-dim 0", expected_sign=-1)
    assert up.meta["slope"] > 0 and up.verdicts[0].level == "ok", up.verdicts
    assert down.meta["slope"] < 0 and down.verdicts[0].level == "ok", down.verdicts
    changes = up.df.set_index("scale")["change"]
    assert changes[-2.0] < changes[-1.0] < changes[0.0] == 0.0 < changes[1.0] < changes[2.0]
    unsteered = up.df.set_index("scale").loc[0.0, "mean"]
    assert unsteered == pytest.approx(float(models.score_texts(model, tokenizer, PROMPTS, COMPLETIONS).mean()), abs=1e-6)


def test_a_direction_layernorm_removes_moves_nothing_and_the_verdict_says_so():
    model, tokenizer = planted_scorer(), word_tokenizer()
    ones = np.ones(D_MODEL, dtype=np.float32)
    result = steer_rewards(model, tokenizer, PROMPTS, COMPLETIONS, ones, layer=0, concept="ones")
    assert np.abs(result.df["change"]).max() < 1e-5
    (verdict,) = result.verdicts
    assert verdict.level == "warn" and "moves nothing" in verdict.evidence


def test_the_verdict_threshold_is_the_moves_z_setting(tiny_scorer, tiny_tokenizer):
    texts = ["The food was great.", "Awful service.", "I loved it.", "Not good at all.", "Fine, I guess.", "Superb."]
    direction = np.random.default_rng(0).normal(size=tiny_scorer.config.hidden_size)
    default = steer_rewards(tiny_scorer, tiny_tokenizer, [""] * 6, texts, direction, layer=0, scales=(-1.0, 1.0))
    z = abs(default.meta["z"])
    strict = steer_rewards(tiny_scorer, tiny_tokenizer, [""] * 6, texts, direction, layer=0, scales=(-1.0, 1.0), moves_z=z + 1)
    assert list(default.df["scale"]) == [-1.0, 0.0, 1.0] and default.meta["moves_z"] == 3.0 and 3.0 < z < np.inf
    assert default.verdicts[0].level == "ok" and strict.verdicts[0].level == "warn"
    assert f"more than {z + 1:g} standard errors" in strict.verdicts[0].threshold


def test_only_the_chosen_positions_are_pushed():
    """The planted reward reads the last token alone (its attention writes nothing): the same push at every
    completion token or at the last one moves the reward alike."""
    model, tokenizer = planted_scorer(), word_tokenizer()
    last = steer_rewards(model, tokenizer, PROMPTS, COMPLETIONS, unit(0), layer=0, positions="last", sd=1.0)
    completion = steer_rewards(model, tokenizer, PROMPTS, COMPLETIONS, unit(0), layer=0, positions="completion", sd=1.0)
    np.testing.assert_allclose(last.df["change"], completion.df["change"], atol=1e-5)  # only the last token is read
    assert last.meta["slope"] > 0


def test_bad_arguments_are_refused_with_the_reason():
    model, tokenizer = planted_scorer(), word_tokenizer()
    with pytest.raises(ValueError, match="out of range"):
        steer_rewards(model, tokenizer, PROMPTS, COMPLETIONS, unit(0), layer=3)
    with pytest.raises(ValueError, match="non-zero"):
        steer_rewards(model, tokenizer, PROMPTS, COMPLETIONS, np.zeros(D_MODEL), layer=0)
    with pytest.raises(ValueError, match="positions"):
        steer_rewards(model, tokenizer, PROMPTS, COMPLETIONS, unit(0), layer=0, positions="prompt")


def test_steering_a_policy_along_a_token_unembedding_makes_it_say_that_token(tiny_tokenizer, tiny_gpt2):
    """A tiny random GPT-2 with its (tied) embeddings scaled up, so that its logits have a range: pushed along the
    unembedding of " the" after its last block, it says " the"; the same seeds at scale 0 give the same samples."""
    policy = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        policy.get_output_embeddings().weight.mul_(50)
    target = tiny_tokenizer.convert_tokens_to_ids("Ġthe")
    word = tiny_tokenizer.decode([target])
    assert word == " the"
    direction = policy.get_output_embeddings().weight[target].detach().numpy()
    last = len(transformer_blocks(policy)) - 1
    prompts = ["The food was", "I bought this phone", "The hotel", "It was"] * 2

    def says_it(_prompts, completions):
        return np.asarray([c.count(word) for c in completions], dtype=float)

    result = steer_policy(
        policy, tiny_tokenizer, prompts, direction, says_it, layer=last, scales=(0.0, 50.0), sd=1.0, max_new_tokens=8, concept=word
    )
    counts = result.df.set_index("scale")["mean"]
    assert counts[50.0] >= 6 > counts[0.0] + 3, counts
    again = steer_policy(policy, tiny_tokenizer, prompts, direction, says_it, layer=last, scales=(0.0,), sd=1.0, max_new_tokens=8)
    assert again.df["mean"].iloc[0] == counts[0.0]  # the same seeds give the same samples
    assert result.verdicts[0].level == "ok"
