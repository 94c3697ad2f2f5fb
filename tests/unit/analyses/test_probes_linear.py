"""Linear probes per layer (rlhf_lens.analyses.probes.linear) on planted synthetic activations: a concept planted in
one layer is found there and nowhere else, the permutation control sits at chance, grouped folds never split a
group, and the Hewitt-Liang control task tells a concept from token identity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhf_lens.analyses.probes.linear import ProbeResult, control_task_labels, grouped_folds, probe_layers

N, LAYERS, D_MODEL = 1000, 4, 32
PLANTED = 2


def planted(seed: int = 0, *, n: int = N, strength: float = 1.5, classes: tuple[float, float] = (0.5, 0.5)):
    """Gaussian activations (n, LAYERS, D_MODEL) with a binary concept added at layer PLANTED along one unit direction
    (+strength for class 1, -strength for class 0), texts grouped four to a prompt."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, LAYERS, D_MODEL))
    y = rng.choice([0, 1], size=n, p=list(classes))
    u = rng.normal(size=D_MODEL)
    x[:, PLANTED, :] += strength * (2 * y - 1)[:, None] * (u / np.linalg.norm(u))
    return x, y, np.arange(n) // 4


def test_a_concept_planted_in_one_layer_is_found_there_and_nowhere_else():
    x, y, groups = planted()
    result = probe_layers(x, y, groups, concept="planted")
    df = result.df.set_index("layer")
    assert result.meta["best_layer"] == PLANTED and result.meta["metric"] == "balanced accuracy"
    assert df.loc[PLANTED, "score"] > 0.9 and df.loc[PLANTED, "selectivity"] > 0.3
    others = df.drop(index=PLANTED)
    assert (others["score"] - 0.5).abs().max() < 0.08  # chance where nothing is planted
    assert others["selectivity"].max() < 0.08
    assert (df["permuted"] - 0.5).abs().max() < 0.08  # the permutation control is at chance everywhere
    assert (df["ci_low"] < df["score"]).all() and (df["score"] < df["ci_high"]).all()
    assert (df["ci_high"] - df["ci_low"]).max() < 0.1  # ~ 2 * 1.96 * sqrt(.25 / 1000)
    assert df["control_task"].isna().all() and result.meta["control_note"].startswith("none")


def test_permuted_control_is_at_chance_for_imbalanced_classes_too():
    """Balanced accuracy: a probe that always says the majority class scores 0.5, not 0.8."""
    x, y, groups = planted(1, classes=(0.8, 0.2))
    df = probe_layers(x, y, groups).df
    assert (df["permuted"] - 0.5).abs().max() < 0.1
    assert df.set_index("layer").loc[PLANTED, "score"] > 0.85


def test_regression_probe_finds_a_planted_reward_with_its_r2():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, LAYERS, D_MODEL))
    reward = x[:, 1, :] @ rng.normal(size=D_MODEL) * 0.3 + 0.3 * rng.normal(size=N)  # R^2 ceiling ~ 0.9
    result = probe_layers(x, reward, np.arange(N) // 4, kind="regression", concept="reward")
    df = result.df.set_index("layer")
    assert result.meta["metric"] == "R^2" and result.meta["chance"] == 0.0 and result.meta["best_layer"] == 1
    assert df.loc[1, "score"] > 0.85 and df.loc[1, "ci_low"] > 0.8
    assert df.drop(index=1)["score"].max() < 0.05 and df["permuted"].max() < 0.05


def test_folds_never_split_a_group():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 60, size=500)
    labels = rng.integers(0, 3, size=500)
    for kind in ("classification", "regression"):
        fold = grouped_folds(labels, groups, kind=kind, folds=5, seed=4)
        assert set(fold) == set(range(5))
        folds_per_group = {g: set(fold[groups == g]) for g in np.unique(groups)}
        assert all(len(f) == 1 for f in folds_per_group.values())


def test_a_probe_cannot_score_by_recognising_a_prompt_seen_in_training():
    """Texts of one prompt share (near-)identical activations and the prompt's label: with folds split by text, a
    probe would recognise the prompts (64 training groups < 128 dimensions are linearly separable whatever their
    labels) and score ~1. Grouped, the held-out prompts are new and it scores chance."""
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(80), 5)
    prompt_activations = rng.normal(size=(80, 1, 128))
    x = prompt_activations[groups] + 0.01 * rng.normal(size=(400, 1, 128))
    y = rng.integers(0, 2, size=80)[groups]
    result = probe_layers(x, y, groups, l2=1e-3)
    assert result.df["score"].iloc[0] < 0.75


def hewitt_liang_data(seed: int = 6):
    """1,200 texts, each of one of 20 token types. Layer 0: noise. Layer 1: noise + a strong embedding of the token
    type (20 random vectors in 32 dimensions: any labelling of the types is linearly separable, so the control task
    is learnable). Layer 2: noise + a real concept (independent of type) along one direction, and no type identity.
    Also returned: an "identity" concept that is a fixed function of the token type (half the types are 1)."""
    rng = np.random.default_rng(seed)
    n, types_n = 1200, 20
    types = rng.integers(0, types_n, size=n)
    x = rng.normal(size=(n, 3, D_MODEL))
    x[:, 1, :] += 2.0 * rng.normal(size=(types_n, D_MODEL))[types]
    real = rng.integers(0, 2, size=n)
    u = rng.normal(size=D_MODEL)
    x[:, 2, :] += 1.5 * (2 * real - 1)[:, None] * (u / np.linalg.norm(u))
    identity = rng.permutation(np.arange(types_n) % 2)[types]
    return x, real, identity, types, np.arange(n) // 3


def test_the_control_task_is_learnable_where_token_identity_is_encoded_and_at_chance_where_it_is_not():
    x, real, _, types, groups = hewitt_liang_data()
    result = probe_layers(x, real, groups, control_tokens=types, concept="real")
    df = result.df.set_index("layer")
    assert df.loc[1, "control_task"] > 0.9  # the probe can memorise a random label per type from layer 1 ...
    assert (df["permuted"] - 0.5).abs().max() < 0.08  # ... which the permutation control cannot show
    assert abs(df.loc[2, "control_task"] - 0.5) < 0.08 and abs(df.loc[0, "control_task"] - 0.5) < 0.08
    assert result.meta["control_types"] == 20 and result.meta["control_coverage"] == 1.0


def test_a_concept_read_off_token_identity_is_not_selective_and_a_real_one_is():
    """Hewitt and Liang's point: the identity concept scores high at layer 1, but so does the control task (any
    labelling of the types is as easy), so its selectivity is ~0; the real concept at layer 2 is selective."""
    x, real, identity, types, groups = hewitt_liang_data()
    by_identity = probe_layers(x, identity, groups, control_tokens=types, concept="identity").df.set_index("layer")
    assert by_identity.loc[1, "score"] > 0.9  # a high score alone would call this concept "encoded at layer 1"
    assert by_identity.loc[1, "score"] - by_identity.loc[1, "permuted"] > 0.35  # and the permutation control agrees
    assert by_identity["selectivity"].max() < 0.1  # the control task does not
    by_real = probe_layers(x, real, groups, control_tokens=types, concept="real")
    assert by_real.meta["best_layer"] == 2 and by_real.meta["best_selectivity"] > 0.3


def test_control_task_labels_are_a_function_of_the_type_drawn_from_the_label_distribution():
    rng = np.random.default_rng(7)
    types = rng.integers(0, 400, size=4000).astype(str)
    labels = rng.choice(["neg", "pos"], size=4000, p=[0.7, 0.3])
    control = control_task_labels(labels, types, seed=1)
    assert all(len(set(control[types == t])) == 1 for t in np.unique(types)[:50])
    per_type = {t: c for t, c in zip(types, control)}
    assert 0.6 < np.mean([c == "neg" for c in per_type.values()]) < 0.8  # drawn with the labels' class shares
    assert (control == control_task_labels(labels, types, seed=1)).all()
    assert (control != control_task_labels(labels, types, seed=2)).any()


def test_a_control_task_with_one_token_type_is_reported_not_scored():
    """Every reward is read at a final "." in some tasks: one type, a constant control task, nothing to learn."""
    x, y, groups = planted()
    result = probe_layers(x, y, groups, control_tokens=np.full(N, "."))
    assert result.df["control_task"].isna().all() and "constant" in result.meta["control_note"]
    assert result.meta["control_types"] == 1
    assert (result.df["selectivity"] == result.df["score"] - result.df["permuted"].clip(lower=0.5)).all()  # chance floors it


def test_errors_name_the_argument_and_the_fix():
    x, y, groups = planted(n=40)
    with pytest.raises(ValueError, match=r"labels must be \(n,\) = \(40,\)"):
        probe_layers(x, y[:-1], groups)
    with pytest.raises(ValueError, match="activations must be \\(n, layer, d_model\\)"):
        probe_layers(x[:, 0, :], y, groups)
    with pytest.raises(ValueError, match="at least folds=5 distinct groups, got 2"):
        probe_layers(x, y, np.arange(40) % 2)
    with pytest.raises(ValueError, match="one class only"):
        probe_layers(x, np.zeros(40), groups)
    with pytest.raises(ValueError, match="kind must be one of"):
        probe_layers(x, y, groups, kind="ranking")
    with pytest.raises(ValueError, match="finite numeric labels"):
        probe_layers(x, np.array(["a", "b"] * 20), groups, kind="regression")
    with pytest.raises(ValueError, match=r"ci_level in \(0, 1\), got 1000, 100 and 95"):
        probe_layers(x, y, groups, ci_level=95)


def test_the_interval_settings_change_the_interval_only():
    x, y, groups = planted(n=400)
    default = probe_layers(x, y, groups)
    narrow = probe_layers(x, y, groups, bootstrap=200, ci_level=0.5)
    same = ["layer", "score", "permuted", "selectivity"]
    assert narrow.df[same].equals(default.df[same])
    width = lambda r: (r.df["ci_high"] - r.df["ci_low"]).to_numpy()  # noqa: E731
    assert (width(narrow) < width(default)).all()
    assert (default.meta["bootstrap"], default.meta["ci_level"]) == (1000, 0.95)
    assert (narrow.meta["bootstrap"], narrow.meta["ci_level"]) == (200, 0.5)
    assert "probe (50% CI)" in [t.get_text() for t in narrow.plot().get_legend().get_texts()]
    stalled = probe_layers(x, y, groups, max_iter=1)
    assert stalled.meta["unconverged_fits"] > 0 and default.meta["unconverged_fits"] == 0


def test_the_result_renders_and_its_meta_is_json():
    x, y, groups = planted(n=400)
    result = probe_layers(x, np.where(y == 1, "positive", "negative"), groups, concept="sentiment <gold>", layers=[3, 4, 5, 6])
    assert isinstance(result, ProbeResult) and list(result.df["layer"]) == [3, 4, 5, 6]
    assert result.meta["classes"] == ["negative", "positive"] and result.meta["best_layer"] == 5
    json.dumps(result.cache_meta())
    html = str(result.to_html())
    assert "<img" in html and "balanced accuracy" in html and "sentiment &lt;gold&gt;" in html
    assert "sentiment <gold>" not in result._repr_html_()
    assert dict(result.headlines())["sentiment <gold>: best layer (by selectivity)"] == "5"
    assert ProbeResult.from_cache(result.df, result.cache_meta()).meta == result.meta
