"""Probe directions and the reward read-out (rlhf_lens.analyses.probes.directions): the read-out maths checked on
three architectures' final norms, probe directions in the raw activation space, and the alignment of a planted reward
direction with planted concept directions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlhf_lens.analyses.probes.directions import (
    DirectionAlignmentResult,
    concept_patterns,
    probe_directions,
    readout_direction,
    reward_direction_alignment,
    reward_readout_direction,
)

N, LAYERS, D_MODEL = 1000, 3, 32


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(a) @ unit(b))


# --------------------------------------------------------------------------- the read-out direction


def tiny_reward_model(kind: str) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
    """(a one-block d_model 16 *ForSequenceClassification model, its final norm, whether the norm centres), with a
    random norm gain and bias so that the read-out is not just the score weights."""
    import transformers

    torch.manual_seed(0)
    shared = dict(vocab_size=50, num_labels=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    sizes = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    if kind == "gpt2":
        model = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, **shared))
        norm, centred = model.transformer.ln_f, True
    elif kind == "llama":
        model = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(num_key_value_heads=1, **sizes, **shared))
        norm, centred = model.model.norm, False
    else:
        model = transformers.GPTNeoXForSequenceClassification(transformers.GPTNeoXConfig(**sizes, **shared))
        norm, centred = model.gpt_neox.final_layer_norm, True
    with torch.no_grad():
        norm.weight.normal_()
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_()
    return model.eval(), norm, centred


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gpt-neox"])
def test_the_reward_is_the_readout_direction_on_the_residual_over_its_norm_scale(kind):
    """reward = score(norm(h)) = r . h / s(h) + score(norm(0)), with s the LayerNorm std or the RMSNorm rms."""
    model, norm, centred = tiny_reward_model(kind)
    h = torch.randn(6, 16) * 3 + 1  # (batch, d_model) final residuals, off-centre so the mean subtraction matters
    with torch.no_grad():
        reward = model.score(norm(h))[:, 0].double().numpy()
        constant = model.score(norm(torch.zeros(1, 16)))[0, 0].item()
    r = reward_readout_direction(model)
    hd = h.double().numpy()
    eps = getattr(norm, "eps", None) or norm.variance_epsilon
    scale = np.sqrt((hd.var(1) if centred else (hd**2).mean(1)) + eps)
    np.testing.assert_allclose(hd @ r / scale + constant, reward, atol=1e-5)
    assert abs(r.sum()) < 1e-9 if centred else abs(r.sum()) > 1e-3  # LayerNorm: the all-ones direction is invisible


def test_readout_direction_is_weight_times_gain_centred_or_not():
    w, g = np.array([1.0, 2.0, 3.0]), np.array([2.0, 1.0, 0.0])
    np.testing.assert_allclose(readout_direction(w, g, centred=False), [2.0, 2.0, 0.0])
    np.testing.assert_allclose(readout_direction(w, g), [2 / 3, 2 / 3, -4 / 3])
    with pytest.raises(ValueError, match="both be \\(d_model,\\)"):
        readout_direction(w, g[:2])


# --------------------------------------------------------------------------- probe directions


def planted_concepts(seed: int = 0):
    """Activations (N, LAYERS, D_MODEL) of isotropic noise with two binary concepts planted at layer 1 along
    orthogonal unit directions: "sentiment" along u, "length" along v."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, LAYERS, D_MODEL))
    u, v = np.linalg.qr(rng.normal(size=(D_MODEL, 2)))[0].T
    sentiment, length = rng.integers(0, 2, N), rng.integers(0, 2, N)
    x[:, 1, :] += 1.5 * (2 * sentiment - 1)[:, None] * u + 1.5 * (2 * length - 1)[:, None] * v
    return x, sentiment, length, u, v


def test_probe_direction_recovers_the_planted_direction_and_points_to_the_second_class():
    x, sentiment, _, u, _ = planted_concepts()
    directions = probe_directions(x, np.where(sentiment == 1, "positive", "negative"))
    assert directions.shape == (LAYERS, D_MODEL)
    assert cosine(directions[1], u) > 0.9  # towards "positive", the second class in sorted order
    assert abs(cosine(directions[0], u)) < 0.4  # noise: a random direction (sd 1/sqrt(32) ~ 0.18)


def test_probe_direction_lives_in_the_raw_activation_space():
    """Standardising removes any per-feature scale, so rescaling feature j by s_j divides the raw-space weight on it
    by s_j: the direction is w_std / scale, not w_std."""
    x, sentiment, _, _, _ = planted_concepts()
    scale = np.exp(np.random.default_rng(1).normal(size=D_MODEL))
    np.testing.assert_allclose(probe_directions(x * scale, sentiment), probe_directions(x, sentiment) / scale, rtol=1e-3, atol=1e-6)


def test_probe_direction_refuses_a_concept_with_three_classes():
    x, sentiment, length, _, _ = planted_concepts()
    with pytest.raises(ValueError, match="exactly two classes; got 3"):
        probe_directions(x, sentiment + length)


def test_regression_direction_recovers_a_planted_reward():
    x, _, _, u, _ = planted_concepts()
    reward = x[:, 2, :] @ u
    assert cosine(probe_directions(x, reward, kind="regression")[2], u) > 0.99


def test_a_pattern_is_the_class_mean_difference_and_the_shift_a_filter_misses_under_correlated_noise():
    """The concept shifts the activations along u; a strong noise component along q (which overlaps u) makes the
    best filter lean away from q, so the filter (probe direction) and the pattern (the shift) part ways: the pattern
    is u, the filter is not."""
    rng = np.random.default_rng(4)
    u, w = np.linalg.qr(rng.normal(size=(D_MODEL, 2)))[0].T
    q = unit(u + w)
    y = rng.integers(0, 2, N)
    x = rng.normal(size=(N, 1, D_MODEL)) + 5.0 * rng.normal(size=(N, 1, 1)) * q + 1.5 * (2 * y - 1)[:, None, None] * u
    patterns = concept_patterns(x, np.where(y == 1, "pos", "neg"))
    np.testing.assert_allclose(patterns, x[y == 1].mean(0) - x[y == 0].mean(0), atol=1e-12)
    assert cosine(patterns[0], u) > 0.95
    assert cosine(probe_directions(x, y)[0], u) < 0.85  # the filter cancels the q noise: it leans towards u - q
    np.testing.assert_allclose(concept_patterns(x, y), patterns)  # 0/1 codes the same classes
    reward = rng.normal(size=N)
    slope = concept_patterns(x[:, :, :1], reward)[0, 0]  # the least-squares slope of one feature on the label
    assert slope == pytest.approx(np.polyfit(reward, x[:, 0, 0], 1)[0])
    with pytest.raises(ValueError, match="labels are constant"):
        concept_patterns(x, np.ones(N))


# --------------------------------------------------------------------------- alignment


def test_a_reward_along_a_concept_direction_has_cosine_one_and_all_the_variance_and_an_orthogonal_concept_none():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, LAYERS, D_MODEL))
    u, v = np.linalg.qr(rng.normal(size=(D_MODEL, 2)))[0].T
    rewards = x[:, 1, :] @ u
    concepts = {"sentiment": np.tile(3.0 * u, (LAYERS, 1)), "flipped": np.tile(-u, (LAYERS, 1)), "length": np.tile(v, (LAYERS, 1))}
    result = reward_direction_alignment(u, concepts, x, rewards)
    df = result.df.set_index(["concept", "layer"])
    assert df.loc[("sentiment", 1), "cosine"] == pytest.approx(1.0) and df.loc[("sentiment", 1), "variance_share"] == pytest.approx(1.0)
    assert df.loc[("flipped", 1), "cosine"] == pytest.approx(-1.0) and df.loc[("flipped", 1), "variance_share"] == pytest.approx(1.0)
    assert abs(df.loc[("length", 1), "cosine"]) < 1e-12 and df.loc[("length", 1), "variance_share"] < 0.01
    assert df.xs(0, level="layer")["variance_share"].max() < 0.01  # other layers' activations are independent
    assert df.xs(1, level="layer")["readout_share"].tolist() == pytest.approx([1.0] * 3)
    assert result.meta["closest"]["1"] in ("sentiment", "flipped") and result.meta["cosine_chance"] == pytest.approx(D_MODEL**-0.5)


def test_planted_sentiment_reward_is_closer_to_the_sentiment_probe_than_to_the_length_probe():
    """The acceptance check in miniature: a reward read along the planted sentiment direction, the two concepts
    probed from labels, compared at the layer where both are planted."""
    x, sentiment, length, u, _ = planted_concepts()
    rewards = x[:, 1, :] @ u + 0.1 * np.random.default_rng(3).normal(size=N)
    directions = {"sentiment": probe_directions(x, sentiment), "length": probe_directions(x, length)}
    result = reward_direction_alignment(u, directions, x, rewards, layers=[4, 5, 6])
    at = result.df[result.df["layer"] == 5].set_index("concept")
    assert at.loc["sentiment", "cosine"] > 0.9 and abs(at.loc["length", "cosine"]) < 0.2
    assert at.loc["sentiment", "variance_share"] > 0.9 and at.loc["length", "variance_share"] < 0.05
    assert result.meta["closest"]["5"] == "sentiment"


def test_alignment_errors_name_the_argument():
    x = np.zeros((10, 2, 4))
    with pytest.raises(ValueError, match="d_model = 3"):
        reward_direction_alignment(np.ones(3), {"a": np.ones((2, 4))}, x, np.zeros(10))
    with pytest.raises(ValueError, match=r"concept_directions\['a'\] must be \(layer, d_model\)"):
        reward_direction_alignment(np.ones(4), {"a": np.ones((3, 4))}, x, np.zeros(10))
    with pytest.raises(ValueError, match="rewards must be"):
        reward_direction_alignment(np.ones(4), {"a": np.ones((2, 4))}, x, np.full(10, np.nan))


def test_the_alignment_result_renders_and_its_meta_is_json():
    x, sentiment, length, u, _ = planted_concepts()
    directions = {"<sentiment>": probe_directions(x, sentiment), "length": probe_directions(x, length)}
    result = reward_direction_alignment(u, directions, x, x[:, 1, :] @ u)
    assert isinstance(result, DirectionAlignmentResult) and len(result.df) == 2 * LAYERS
    json.dumps(result.cache_meta())
    html = str(result.to_html())
    assert "<img" in html and "&lt;sentiment&gt;" in html and "<sentiment>" not in html
    ((label, value),) = result.headlines()
    assert label.startswith("concept closest to the reward read-out, last layer") and value.split(" (cosine")[0] in directions
