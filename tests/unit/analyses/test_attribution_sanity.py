"""Model-randomisation sanity check of attribution methods (rlhf_lens.analyses.attribution.sanity): the cascade's
order on three architectures, the original model left alone, rank correlations by hand, a model-blind method
flagged and integrated gradients passing."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from rlhf_lens import models
from rlhf_lens.analyses.attribution import RewardAttributionResult, reward_integrated_gradients, word_starts
from rlhf_lens.analyses.attribution.sanity import SanityCheckResult, attribution_rank_correlations, randomisation_sanity_check

INIT = 0.3
"""initializer_range of the tiny models: far from linear, so integrated gradients has something to explain."""
REFERENCE = "It was a product."
"""Llama's baseline: its pad row is zero, and a path through RMSNorm(0) misses completeness (test_attribution_reward)."""


# --------------------------------------------------------------------------- models, texts, methods


def tiny_reward(kind: str, tokenizer) -> torch.nn.Module:
    """A 2-layer, d_model 32 reward model (*ForSequenceClassification, one label) of the given architecture."""
    import transformers

    torch.manual_seed(0)
    shared = dict(
        vocab_size=len(tokenizer), num_labels=1, initializer_range=INIT, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    if kind == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=128, **shared)
        return transformers.GPT2ForSequenceClassification(config).eval()
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    if kind == "llama":
        return transformers.LlamaForSequenceClassification(transformers.LlamaConfig(num_key_value_heads=2, **sizes, **shared)).eval()
    return transformers.GPTNeoXForSequenceClassification(transformers.GPTNeoXConfig(**sizes, **shared)).eval()


CASCADES = {
    # architecture: (cascade labels, parameter-name prefixes randomised at each step)
    "gpt2": (
        ["score head", "+ block 1, ln_f", "+ block 0", "+ embeddings (wte, wpe)"],
        [["score."], ["transformer.h.1.", "transformer.ln_f."], ["transformer.h.0."], ["transformer.wte.", "transformer.wpe."]],
    ),
    "llama": (
        ["score head", "+ block 1, norm", "+ block 0", "+ embeddings (embed_tokens)"],
        [["score."], ["model.layers.1.", "model.norm."], ["model.layers.0."], ["model.embed_tokens."]],
    ),
    "gpt-neox": (
        ["score head", "+ block 1, final_layer_norm", "+ block 0", "+ embeddings (embed_in)"],
        [["score."], ["gpt_neox.layers.1.", "gpt_neox.final_layer_norm."], ["gpt_neox.layers.0."], ["gpt_neox.embed_in."]],
    ),
}


def texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short reviews split into (first sentence, rest)."""
    from rlhf_lens.tasks import get_task

    rows = get_task("sentiment").corpus(n, seed=seed)
    pairs = [row["text"].split(". ", 1) for row in rows]
    return [p[0] + "." for p in pairs], [" " + p[1] if len(p) > 1 else " Fine." for p in pairs]


def model_blind(reward_model, tokenizer, prompts, completions) -> RewardAttributionResult:
    """An attribution "method" constructed to ignore the model: each token's attribution is sin(1.7 * token id), on the
    same rows (texts, positions, tokens, words, parts) as `reward_integrated_gradients` gives."""
    parts = models.reward_input_parts(tokenizer, prompts, completions, models.context_length(reward_model))
    frames = []
    for text, (prefix, suffix) in enumerate(parts):
        ids = prefix + suffix
        frames.append(
            pd.DataFrame(
                {
                    "text": text,
                    "position": np.arange(len(ids)),
                    "token_id": ids,
                    "token": [tokenizer.decode([i]) for i in ids],
                    "word": word_starts(tokenizer, ids, len(prefix)),
                    "part": ["prompt"] * len(prefix) + ["completion"] * len(suffix),
                    "attribution": np.sin(1.7 * np.asarray(ids, dtype=float)),
                }
            )
        )
    return RewardAttributionResult(df=pd.concat(frames, ignore_index=True), meta={"method": "model_blind"})


class Recorder:
    """The model-blind method, noting which parameters differ from the original's on every call."""

    def __init__(self, original: torch.nn.Module):
        self.reference = {name: p.detach().clone() for name, p in original.named_parameters()}
        self.changed: list[set[str]] = []
        self.models: list[dict[str, torch.Tensor]] = []

    def __call__(self, reward_model, tokenizer, prompts, completions) -> RewardAttributionResult:
        params = {name: p.detach().clone() for name, p in reward_model.named_parameters()}
        self.changed.append({name for name, p in params.items() if not torch.equal(p, self.reference[name])})
        self.models.append(params)
        return model_blind(reward_model, tokenizer, prompts, completions)


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter moved off its initial value (norm gains off 1, biases off 0), as training would leave it."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def attribution_result(maps: dict[int, tuple[list[int], list[float]]]) -> RewardAttributionResult:
    """A RewardAttributionResult of given (token ids, attributions) per text."""
    frames = [
        pd.DataFrame({"text": t, "position": range(len(ids)), "token_id": ids, "token": "x", "word": 0, "part": "prompt", "attribution": a})
        for t, (ids, a) in maps.items()
    ]
    return RewardAttributionResult(df=pd.concat(frames, ignore_index=True))


# --------------------------------------------------------------------------- the cascade


@pytest.mark.parametrize("kind", list(CASCADES))
def test_the_cascade_randomises_from_the_top_on_a_copy_and_leaves_the_original_alone(tiny_tokenizer, kind):
    model = perturbed(tiny_reward(kind, tiny_tokenizer))
    before = {name: t.clone() for name, t in model.state_dict().items()}
    recorder = Recorder(model)
    prompts, completions = texts(3)
    result = randomisation_sanity_check(model, tiny_tokenizer, prompts, completions, method=recorder)

    labels, prefixes = CASCADES[kind]
    assert list(result.df["randomised"]) == labels
    assert list(result.df["layers_randomised"]) == [1, 2, 3, 4]
    names = set(recorder.reference)
    assert recorder.changed[0] == set()  # the first call attributes the trained model itself
    for step in range(1, len(labels) + 1):
        randomised = tuple(p for group in prefixes[:step] for p in group)
        assert recorder.changed[step] == {n for n in names if n.startswith(randomised)}, labels[step - 1]
    assert recorder.changed[-1] == names  # fully random at the end

    # The original: same weights, same mode; the copies' weights are N(0, initializer_range), not degenerate.
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    big = [p for p in recorder.models[-1].values() if p.ndim >= 2 and p.numel() >= 1000]
    assert big and all(0.8 * INIT < float(p.std()) < 1.2 * INIT for p in big)


def test_the_cascade_can_stop_above_the_embeddings_and_is_seeded(tiny_tokenizer):
    model = perturbed(tiny_reward("gpt2", tiny_tokenizer))
    prompts, completions = texts(2)
    runs = {}
    for name, seed, embeddings in (("a", 0, False), ("b", 0, False), ("c", 1, False), ("full", 0, True)):
        runs[name] = Recorder(model)
        result = randomisation_sanity_check(
            model, tiny_tokenizer, prompts, completions, method=runs[name], seed=seed, embeddings=embeddings
        )
    assert list(result.df["randomised"])[-1] == "+ embeddings (wte, wpe)"
    assert not any(n.startswith(("transformer.wte", "transformer.wpe")) for n in runs["a"].changed[-1])
    a, b, c, full = (runs[k].models[-1] for k in ("a", "b", "c", "full"))
    assert all(torch.equal(a[n], b[n]) for n in a)  # the same seed draws the same random weights
    assert not torch.equal(a["transformer.h.0.attn.c_attn.weight"], c["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(a["transformer.h.0.attn.c_attn.weight"], full["transformer.h.0.attn.c_attn.weight"])


def test_an_unknown_layout_and_bad_arguments_are_refused(tiny_tokenizer):
    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(len(tiny_tokenizer), 8)

    class ToyReward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.score = Backbone(), torch.nn.Linear(8, 1)
            self.config = SimpleNamespace(model_type="toy", n_positions=32)

        @property
        def base_model(self):
            return self.backbone

    prompts, completions = texts(2)
    with pytest.raises(TypeError, match=r"ToyReward \(model_type 'toy'\).*ModuleList.*has 0 \(none\)"):
        randomisation_sanity_check(ToyReward(), tiny_tokenizer, prompts, completions, method=model_blind)
    model = tiny_reward("gpt2", tiny_tokenizer)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        randomisation_sanity_check(model, tiny_tokenizer, prompts, completions[:1], method=model_blind)
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        randomisation_sanity_check(model, tiny_tokenizer, prompts, completions, method=model_blind, threshold=0.0)
    with pytest.raises(ValueError, match="examples must be a number of texts"):
        randomisation_sanity_check(model, tiny_tokenizer, prompts, completions, method=model_blind, examples=-1)


# --------------------------------------------------------------------------- rank correlations


def test_rank_correlations_by_hand():
    original = attribution_result(
        {0: ([5, 6, 7, 8], [1.0, 2.0, 3.0, 4.0]), 1: ([5, 6, 7, 8], [0.0, -3.0, 1.0, 2.0]), 2: ([5, 6], [1.0, 2.0])}
    )
    other = attribution_result({0: ([5, 6, 7, 8], [4.0, 3.0, 2.0, 1.0]), 1: ([5, 6, 7, 8], [0.0, 1.0, -2.0, 3.0]), 2: ([5, 6], [2.0, 1.0])})
    got = attribution_rank_correlations(original, other).set_index("text")
    # Text 0: reversed ranks. Text 1: the token that is 0 in both maps is left out; ranks (1, 2, 3) vs (2, 1, 3) give
    # 1 - 6 * 2 / (3 * 8) = 0.5, and of |attribution| (3, 1, 2) vs (1, 2, 3): 1 - 6 * 6 / 24 = -0.5. Text 2: 2 tokens.
    assert got.loc[0, "spearman"] == pytest.approx(-1.0) and got.loc[0, "spearman_abs"] == pytest.approx(-1.0)
    assert got.loc[1, "spearman"] == pytest.approx(0.5) and got.loc[1, "spearman_abs"] == pytest.approx(-0.5)
    assert list(got["tokens"]) == [4, 3, 2] and got.loc[2, ["spearman", "spearman_abs"]].isna().all()
    shifted = attribution_result(
        {0: ([5, 6, 7, 9], [1.0, 2.0, 3.0, 4.0]), 1: ([5, 6, 7, 8], [0.0, 1.0, 2.0, 3.0]), 2: ([5, 6], [1.0, 2.0])}
    )
    with pytest.raises(ValueError, match="not of the same tokens"):
        attribution_rank_correlations(original, shifted)


# --------------------------------------------------------------------------- verdicts


def test_a_method_that_ignores_the_model_is_flagged(tiny_tokenizer):
    model = tiny_reward("gpt2", tiny_tokenizer)
    prompts, completions = texts(6)
    result = randomisation_sanity_check(model, tiny_tokenizer, prompts, completions, method=model_blind)
    assert np.allclose(result.df["spearman"], 1.0) and np.allclose(result.df["spearman_abs"], 1.0)
    assert (result.df["texts"] == 6).all()
    (verdict,) = result.verdicts
    assert verdict.level == "flag" and verdict.value == pytest.approx(1.0)
    assert "do not depend on the model's weights" in verdict.evidence and "fail the Adebayo sanity check" in verdict.evidence
    assert result.meta["method"] == "model_blind" and result.meta["first_changed"] is None
    assert [e["text"] for e in result.meta["examples"]] == [0, 1]  # the default keeps 2 texts' maps
    one = randomisation_sanity_check(model, tiny_tokenizer, prompts, completions, method=model_blind, examples=1, threshold=1.0)
    assert [e["text"] for e in one.meta["examples"]] == [0] and one.meta["threshold"] == 1.0
    assert one.verdicts[0].level == "flag"  # a correlation of 1 is not below a threshold of 1


@pytest.mark.filterwarnings("ignore:.*miss completeness")  # 4 steps: ranks are compared here, not completeness
@pytest.mark.parametrize("kind", list(CASCADES))
def test_integrated_gradients_maps_change_when_the_weights_are_random(tiny_tokenizer, kind):
    model = tiny_reward(kind, tiny_tokenizer)
    prompts, completions = texts(4)
    method = functools.partial(reward_integrated_gradients, n_steps=4, baseline=REFERENCE if kind == "llama" else "pad")
    result = randomisation_sanity_check(model, tiny_tokenizer, prompts, completions, method=method)
    # Over randomisation seeds 0-4, max(|Spearman|, |Spearman of |attribution||) at full randomisation was at most
    # 0.27 (gpt2), 0.27 (llama), 0.18 (gpt-neox); the score head alone left up to 0.57.
    (verdict,) = result.verdicts
    assert verdict.level == "ok", (verdict.evidence, result.df)
    final = result.df.iloc[-1]
    assert abs(final["spearman"]) < 0.5 and abs(final["spearman_abs"]) < 0.5
    assert result.meta["method"] == "integrated_gradients" and result.meta["first_changed"] is not None


def test_the_result_draws_renders_and_round_trips(tiny_tokenizer):
    model = tiny_reward("gpt2", tiny_tokenizer)
    prompts, completions = texts(3)
    result = randomisation_sanity_check(model, tiny_tokenizer, prompts, completions, method=model_blind)
    html = str(result.to_html())
    assert "v-flag" in html and html.count("<img") == 1 and html.count('class="tokens"') == 1 + len(result.df)
    assert "+ embeddings (wte, wpe)" in html and dict(result.headlines())["maps stay changed from step"] == "never"
    import matplotlib

    matplotlib.use("Agg")
    ax = result.plot()
    assert len(ax.lines) == 2 + 3 and [t.get_text() for t in ax.get_xticklabels()][0] == "trained model"
    cached = json.loads(json.dumps(result.cache_meta()))
    again = SanityCheckResult.from_cache(result.df, cached)
    assert again.verdicts == result.verdicts and again.meta["examples"] == result.meta["examples"]
