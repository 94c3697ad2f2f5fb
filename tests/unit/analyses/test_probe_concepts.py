"""The corpus concepts probed together (rlhf_lens.analyses.probes.concepts) and the combined results the report shows:
the texts and their labels, the residual stream's layer naming against HF's forward, planted concepts found in their
layer with unprobeable ones reported, and the steering and over-training tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rlhf_lens.analyses.probes import analyses as probe_analyses
from rlhf_lens.analyses.probes.activations import collect_activations
from rlhf_lens.analyses.probes.concepts import (
    ConceptProbesResult,
    ProbesOverTrainingResult,
    corpus_probe_texts,
    last_words,
    probe_concepts,
    residual_stream,
)
from rlhf_lens.analyses.probes.steering import ConceptSteeringResult, steer_rewards
from rlhf_lens.tasks import get_task

N, LAYERS, D_MODEL = 600, 3, 16


@pytest.fixture(scope="module")
def corpus():
    return get_task("sentiment", trigger_word="zorp", trigger_rate=0.2).corpus(400, seed=0)


def test_corpus_texts_are_a_deterministic_sample_with_their_labels_and_length_terciles(corpus):
    texts = corpus_probe_texts(corpus, 300, seed=0)
    again = corpus_probe_texts(corpus, 300, seed=0)
    assert texts.completions == again.completions and len(texts) == 300 and set(texts.prompts) == {""}
    by_text = {r["text"]: r for r in corpus}
    for text, row in zip(texts.completions, texts.labels.itertuples()):
        assert by_text[text]["sentiment"] == row.sentiment and by_text[text]["length"] == row.length
    buckets = texts.labels.groupby("length_bucket")["length"]
    assert buckets.max()["short"] <= buckets.min()["medium"] and buckets.max()["medium"] <= buckets.min()["long"]
    assert buckets.size().min() > 60  # terciles, up to ties at the edges
    assert len(corpus_probe_texts(corpus, 10_000)) == len(corpus)  # asking for more than there is takes them all
    assert corpus_probe_texts(corpus, 300, seed=1).completions != texts.completions


def test_corpus_errors_name_the_file_and_the_fields(corpus):
    with pytest.raises(ValueError, match=r"corpus is empty.*corpus.jsonl"):
        corpus_probe_texts([], 10)
    with pytest.raises(ValueError, match=r"'text' and 'length'"):
        corpus_probe_texts([{"text": "a b"}], 10)


def test_last_words_are_the_control_task_types():
    assert list(last_words(["It was great.", "Not bad at ALL!", "...", "zorp"])) == ["great", "all", "", "zorp"]


def planted_labels(seed: int = 0):
    """Activations (N, LAYERS, D_MODEL) with "planted" (two classes) added at layer 1, a constant concept, and a
    concept with a class of 3 texts."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, LAYERS, D_MODEL))
    y = rng.choice(["no", "yes"], size=N)
    x[:, 1, 0] += np.where(y == "yes", 2.0, -2.0)
    rare = np.array(["common"] * (N - 3) + ["rare"] * 3)
    labels = pd.DataFrame({"planted": y, "constant": "same", "rare": rare})
    return x, labels


CONCEPTS = {"planted": ("planted", "classification"), "constant": ("constant", "classification"), "rare": ("rare", "classification")}


def test_a_planted_concept_is_found_in_its_layer_and_unprobeable_ones_are_named():
    x, labels = planted_labels()
    number = x[:, 2, 3] * 2.0 + 0.1 * np.random.default_rng(1).normal(size=N)
    result = probe_concepts(
        x, labels, concepts={**CONCEPTS, "absent": ("nowhere", "classification")}, extra={"number": (number, "regression")}
    )
    assert set(result.meta["concepts"]) == {"planted", "number"}
    assert set(result.meta["skipped"]) == {"constant", "rare", "absent"}
    assert "same" in result.meta["skipped"]["constant"] and "'rare'" not in result.meta["skipped"]["rare"]
    assert "holds 3 texts" in result.meta["skipped"]["rare"] and "no such label" in result.meta["skipped"]["absent"]
    best = result.best().set_index("concept")
    assert best.loc["planted", "best_layer"] == 1 and best.loc["planted", "selectivity"] > 0.4
    assert best.loc["number", "best_layer"] == 2 and best.loc["number", "score"] > 0.95 and best.loc["number", "metric"] == "R^2"
    planted_rows = result.df[result.df["concept"] == "planted"].set_index("layer")
    assert planted_rows.loc[[0, 2], "selectivity"].max() < 0.08
    one = result.probe("planted")
    assert one.meta["best_layer"] == 1 and list(one.df["layer"]) == [0, 1, 2]
    with pytest.raises(KeyError, match="constant"):
        result.probe("constant")


def test_the_combined_result_draws_escapes_and_round_trips_through_the_cache():
    x, labels = planted_labels()
    labels = labels.rename(columns={"planted": "<b>x</b>"})
    result = probe_concepts(x, labels, concepts={"<b>concept</b>": ("<b>x</b>", "classification")}, meta={"stage": "reward"})
    html = str(result.to_html())
    assert "<b>concept</b>" not in html and "&lt;b&gt;concept&lt;/b&gt;" in html
    assert result.plot() is not None and result.title.endswith("(stage reward)")
    assert result.headlines() == [
        ("best-read concepts, selectivity (reward)", f"<b>concept</b> {result.best()['selectivity'].iloc[0]:+.2f}")
    ]
    again = ConceptProbesResult.from_cache(result.df, result.cache_meta())
    assert again.best().equals(result.best())
    with pytest.raises(ValueError, match="labels hold 5 rows but activations 600"):
        probe_concepts(x, labels.head(5))


def test_the_residual_stream_is_hf_hidden_states_then_the_final_residual_before_the_norm(tiny_gpt2, tiny_tokenizer):
    prompts, completions = ["", "", ""], ["The food was great.", "Awful.", "I would not go back there again."]
    store = collect_activations(
        tiny_gpt2, tiny_tokenizer, prompts, completions, sites=("resid_pre", "resid_post"), reads=("last",), backend="hooks", quiet=True
    )
    stream = residual_stream(store, "last")  # (n, L + 1, d_model)
    captured = {}
    handle = tiny_gpt2.transformer.ln_f.register_forward_pre_hook(lambda _m, args: captured.__setitem__("final", args[0]))
    try:
        for i, text in enumerate(completions):
            ids = [tiny_tokenizer.bos_token_id, *tiny_tokenizer(text)["input_ids"]]
            with torch.no_grad():
                out = tiny_gpt2(torch.tensor([ids]), output_hidden_states=True)
            expected = [h[0, -1] for h in out.hidden_states[:-1]] + [captured["final"][0, -1]]
            np.testing.assert_allclose(stream[i], torch.stack(expected).numpy(), atol=1e-5)
    finally:
        handle.remove()
    with pytest.raises(ValueError, match=r"lacks site\(s\) \['resid_post'\]"):
        residual_stream(collect_activations(tiny_gpt2, tiny_tokenizer, prompts, completions, sites=("resid_pre",), quiet=True), "last")


def test_concept_directions_give_a_pattern_and_a_filter_for_each_concept_that_varies():
    x, _ = planted_labels()
    labels = pd.DataFrame(
        {
            "sentiment": np.where(x[:, 1, 0] > 0, "positive", "negative"),
            "length": np.arange(N) % 17 + 3,
            "negation": np.arange(N) % 3 == 0,
            "trigger": False,
        }
    )
    directions = probe_analyses.concept_directions(x, labels)
    assert set(directions) == {f"{c} · {k}" for c in ("sentiment", "length", "negation") for k in ("pattern", "filter")}
    assert all(d.shape == (LAYERS, D_MODEL) for d in directions.values())
    pattern = directions["sentiment · pattern"][1]
    assert np.argmax(np.abs(pattern)) == 0 and pattern[0] > 0  # towards positive, along the planted coordinate
    steer = probe_analyses.steering_directions(x, labels, layer=0)
    assert set(steer) == {"sentiment", "length", "negation"} and np.allclose(steer["sentiment"], pattern)
    assert set(probe_analyses.steering_directions(x, labels, 0, ("negation", "trigger present"))) == {"negation"}  # constant trigger
    with pytest.raises(ValueError, match=r"unknown steering concept\(s\) \['gold sentiment'\]"):
        probe_analyses.steering_directions(x, labels, 0, ("gold sentiment",))


def test_steering_runs_combine_into_one_table_with_a_verdict_each(tiny_scorer, tiny_tokenizer):
    model = tiny_scorer
    texts = ["The food was great.", "Awful service.", "I loved it.", "Not good at all.", "Fine, I guess.", "Superb."] * 3
    rng = np.random.default_rng(0)
    runs = {
        name: steer_rewards(
            model, tiny_tokenizer, [""] * len(texts), texts, rng.normal(size=model.config.hidden_size), layer=0, concept=name
        )
        for name in ("a", "b")
    }
    combined = ConceptSteeringResult.from_runs(runs, meta={"stage": "reward"})
    assert list(combined.df["concept"].unique()) == ["a", "b"] and len(combined.df) == 2 * len(runs["a"].df)
    assert combined.verdicts == runs["a"].verdicts + runs["b"].verdicts
    assert combined.meta["concepts"]["b"]["slope"] == runs["b"].meta["slope"] and combined.meta["layer"] == 0
    assert combined.plot() is not None and "steering along a" in str(combined.to_html())
    with pytest.raises(ValueError, match="no steering runs"):
        ConceptSteeringResult.from_runs({})


def test_probes_over_training_stack_each_checkpoints_best_layers():
    x, labels = planted_labels()
    results = [
        (tag, step, probe_concepts(x * scale, labels, concepts=CONCEPTS)) for tag, step, scale in [("step-1", 1, 1.0), ("final", 2, 2.0)]
    ]
    over = ProbesOverTrainingResult.from_checkpoints(results, meta={"stage": "reward"})
    assert list(over.df["tag"]) == ["step-1", "final"] and list(over.df["concept"]) == ["planted", "planted"]
    assert over.meta["checkpoints"] == ["step-1", "final"] and set(over.meta["skipped"]) == {"constant", "rare"}
    assert (over.df["best_layer"] == 1).all()
    assert over.plot() is not None and "planted" in str(over.table_html())


# --------------------------------------------------------------------------- the registered analyses and their settings


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, corpus, tiny_scorer, tiny_tokenizer):
    """A run with 60 corpus texts and one reward stage: the tiny scorer as its final checkpoint."""
    from rlhf_lens.runs import Run, RunWriter

    path = tmp_path_factory.mktemp("probe_run") / "run"
    writer = RunWriter.create(path, name="probes", task="sentiment", seed=0, config={"task": {"name": "sentiment", "options": {}}})
    writer.write_data("corpus", corpus[:60])
    writer.add_stage("reward", "reward")
    writer.save_checkpoint(
        "reward", "final", model=tiny_scorer, tokenizer=tiny_tokenizer, step=1, metrics={}, extra_meta={"reward_kind": "ranking"}
    )
    writer.set_stage_status("reward", "done")
    return Run.open(path)


def test_reward_steering_computes_with_its_settings_directly_and_through_the_cache(reward_run):
    from rlhf_lens.analyses import analyze

    default = probe_analyses.analyze_reward_steering(reward_run, stage="reward")
    assert list(default.df["concept"].unique()) == ["sentiment", "length", "negation"]
    assert sorted(default.df["scale"].unique()) == [-2.0, -1.0, 0.0, 1.0, 2.0] and default.meta["texts"] == 60  # all there are
    assert default.meta["moves_z"] == 3.0 and default.verdicts[0].level == "ok"
    changed = probe_analyses.analyze_reward_steering(
        reward_run, stage="reward", steered_texts=20, concepts=("sentiment",), scales=(-1.0, 1.0), moves_z=1e9
    )
    assert list(changed.df["scale"]) == [-1.0, 0.0, 1.0] and changed.meta["texts"] == 20 and changed.meta["moves_z"] == 1e9
    assert [v.level for v in changed.verdicts] == ["warn"] and "more than 1e+09 standard errors" in changed.verdicts[0].threshold
    assert changed.meta["concepts"]["sentiment"]["slope"] != default.meta["concepts"]["sentiment"]["slope"]  # fewer texts

    settings = {"probes.reward_steering": {"steered_texts": 20, "concepts": ["sentiment"], "scales": [-1, 1], "moves_z": 1e9}}
    (outcome,) = analyze(reward_run, ["probes.reward_steering"], quiet=True, settings=settings)
    assert outcome.status == "computed" and outcome.result.verdicts == changed.verdicts
    pd.testing.assert_frame_equal(outcome.result.df, changed.df)
    (again,) = analyze(reward_run, ["probes.reward_steering"], quiet=True, settings=settings)
    assert again.status == "cached" and again.result.verdicts == changed.verdicts


def test_reward_concepts_probe_the_concepts_their_settings_name(reward_run):
    default = probe_analyses.analyze_reward_concepts(reward_run, stage="reward")
    assert set(default.meta["concepts"]) == {"gold sentiment", "negation", "trigger present", "length bucket", "reward"}
    assert default.meta["skipped"] == {"domain": "class phone holds 5 texts (fewer than 10)"} and default.meta["n"] == 60
    changed = probe_analyses.analyze_reward_concepts(reward_run, stage="reward", concepts=("domain",), min_class=5)
    assert set(changed.meta["concepts"]) == {"domain", "reward"} and changed.meta["skipped"] == {}
    reward_rows = [r[r["concept"] == "reward"].reset_index(drop=True) for r in (default.df, changed.df)]
    pd.testing.assert_frame_equal(*reward_rows)  # the same texts and probe: only the chosen concepts changed
    with pytest.raises(ValueError, match=r"unknown concept\(s\) \['sentiment'\]; the corpus concepts are"):
        probe_analyses.analyze_reward_concepts(reward_run, stage="reward", concepts=("sentiment",))
