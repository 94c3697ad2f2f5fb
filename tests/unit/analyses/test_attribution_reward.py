"""Integrated gradients of reward models (rlhf_lens.analyses.attribution): closed form, completeness, batching, words."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from rlhf_lens import models
from rlhf_lens.analyses.attribution import (
    RewardAttributionResult,
    mean_word_attributions,
    reward_feature_ablation,
    reward_integrated_gradients,
    word_attributions,
)

D_MODEL = 8
REFERENCE = "It was a product."


# --------------------------------------------------------------------------- models and texts


class _CumulativeBackbone(torch.nn.Module):
    """hidden[t] = sum of the embeddings of the real tokens up to t: linear in the embeddings."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, D_MODEL)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None):
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return SimpleNamespace(last_hidden_state=(embeds * attention_mask[:, :, None]).cumsum(1))


class LinearToy(torch.nn.Module):
    """reward = w . sum_t E[id_t] + b - offset, so IG's exact answer is (E[id_t] - E[baseline_t]) . w per token."""

    def __init__(self, vocab: int, offset: float = 0.7, context: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.transformer = _CumulativeBackbone(vocab)
        self.score = torch.nn.Linear(D_MODEL, 1)
        self.config = SimpleNamespace(n_positions=context, reward_offset=offset)

    @property
    def base_model(self):
        return self.transformer

    def get_input_embeddings(self):
        return self.transformer.embed


def gpt2_reward(tokenizer, *, initializer_range: float = 0.3, context: int = 64, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=len(tokenizer),
        n_positions=context,
        initializer_range=initializer_range,
        num_labels=1,
        **ids,
    )
    return transformers.GPT2ForSequenceClassification(config).eval()


def llama_reward(tokenizer):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return transformers.LlamaForSequenceClassification(config).eval()


def neox_reward(tokenizer):
    import transformers

    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, initializer_range=0.3, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return transformers.GPTNeoXForSequenceClassification(config).eval()


def texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short reviews split into (first sentence, second sentence)."""
    from rlhf_lens.tasks import get_task

    prompts, completions = [], []
    for row in get_task("sentiment").corpus(n, seed=seed):
        sentences = row["text"].split(". ")
        prompts.append(sentences[0].rstrip(".") + ".")
        completions.append(" " + sentences[1].rstrip(".") + "." if len(sentences) > 1 else " Fine.")
    return prompts, completions


def within_tolerance(result: RewardAttributionResult, tolerance: float = 0.01) -> np.ndarray:
    t = result.texts
    return (t["delta"].abs() <= tolerance * (t["reward"] - t["baseline_reward"]).abs() + 1e-3).to_numpy()


def token_matrix(result: RewardAttributionResult) -> list[np.ndarray]:
    return [rows["attribution"].to_numpy() for _, rows in result.df.groupby("text", sort=True)]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("baseline", ["pad", "zero", "The food was fine."])
def test_linear_toy_attributions_equal_the_closed_form(tiny_tokenizer, baseline):
    model = LinearToy(len(tiny_tokenizer))
    prompts, completions = texts(6)
    result = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, baseline=baseline, n_steps=3)
    table = model.get_input_embeddings().weight.detach().double()  # (vocab, d_model)
    w = model.score.weight.detach().double()[0]  # (d_model,)
    ids = models.reward_input_ids(tiny_tokenizer, prompts, completions, 32)
    reference = models.encode_prompts(tiny_tokenizer, [baseline])[0] if baseline not in ("pad", "zero") else None
    for i, seq in enumerate(ids):
        x = table[seq]  # (seq, d_model)
        if baseline == "zero":
            b = torch.zeros_like(x)
        elif baseline == "pad":
            b = table[[tiny_tokenizer.pad_token_id] * len(seq)]
        else:
            b = table[(reference[:1] + reference[1:] * len(seq))[: len(seq)]]  # BOS + the reference repeated
        expected = ((x - b) @ w).numpy()
        got = result.df[result.df["text"] == i]["attribution"].to_numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        reward = float(x.sum(0) @ w + model.score.bias.detach().double() - 0.7)
        assert result.meta["texts"][i]["reward"] == pytest.approx(reward, abs=1e-5)
        assert abs(result.meta["texts"][i]["delta"]) < 1e-5


def test_adaptive_steps_meet_completeness_where_four_steps_do_not(tiny_tokenizer):
    model = gpt2_reward(tiny_tokenizer)
    prompts, completions = texts(32)
    adaptive = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions)
    assert within_tolerance(adaptive).mean() >= 0.95
    assert adaptive.texts["steps"].max() > 16  # some texts needed more than the first pass
    fixed = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=4)
    assert within_tolerance(fixed).mean() < 0.95
    assert set(fixed.texts["steps"]) == {4}
    # first_steps starts the doubling; a slack of 1000 (abs_tolerance) lets every text stop at its first pass
    loose = reward_integrated_gradients(model, tiny_tokenizer, prompts[:8], completions[:8], first_steps=4, abs_tolerance=1e3)
    assert set(loose.texts["steps"]) == {4} and loose.meta["first_steps"] == 4 and loose.meta["abs_tolerance"] == 1e3
    with pytest.raises(ValueError, match="first_steps must be positive"):
        reward_integrated_gradients(model, tiny_tokenizer, prompts[:1], completions[:1], first_steps=0)
    # Completeness in the table itself: each text's attributions sum to reward - baseline reward + delta.
    sums = adaptive.df.groupby("text")["attribution"].sum().to_numpy()
    t = adaptive.texts
    np.testing.assert_allclose(sums, (t["reward"] - t["baseline_reward"] + t["delta"]).to_numpy(), atol=1e-4)


def test_rewards_equal_score_texts_with_offset_and_left_truncation(tiny_tokenizer):
    model = gpt2_reward(tiny_tokenizer, context=32)
    model.config.reward_offset = 0.37
    prompts, completions = texts(5)
    prompts[2] = " ".join([prompts[2]] * 12)  # far longer than the 32-token context
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = models.score_texts(model, tiny_tokenizer, prompts, completions).numpy()
        result = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=8)
    np.testing.assert_allclose(result.texts["reward"].to_numpy(), expected, atol=1e-5)
    long_text = result.df[result.df["text"] == 2]
    assert len(long_text) == 32 and long_text["position"].max() == 31
    assert (long_text["part"] == "completion").sum() == len(tiny_tokenizer(completions[2], add_special_tokens=False)["input_ids"])


def test_batched_and_one_at_a_time_agree(tiny_tokenizer):
    model = gpt2_reward(tiny_tokenizer)
    prompts, completions = texts(5, seed=1)
    together = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=8)
    chunked = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=8, max_batch_tokens=200)
    alone = [reward_integrated_gradients(model, tiny_tokenizer, [p], [c], n_steps=8) for p, c in zip(prompts, completions)]
    for i, (a, b) in enumerate(zip(token_matrix(together), token_matrix(chunked))):
        np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_allclose(a, alone[i].df["attribution"].to_numpy(), atol=1e-4)
        assert together.meta["texts"][i]["reward"] == pytest.approx(alone[i].meta["texts"][0]["reward"], abs=1e-5)


@pytest.mark.parametrize(("build", "baseline"), [(llama_reward, REFERENCE), (neox_reward, "pad")], ids=["llama", "gpt-neox"])
def test_llama_and_neox_reward_models_meet_completeness(tiny_tokenizer, build, baseline):
    model = build(tiny_tokenizer)
    prompts, completions = texts(4, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no text may miss completeness
        result = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, baseline=baseline)
    assert within_tolerance(result).all()
    np.testing.assert_allclose(
        result.texts["reward"].to_numpy(), models.score_texts(model, tiny_tokenizer, prompts, completions).numpy(), atol=1e-5
    )


def test_a_zero_pad_row_on_llama_misses_completeness_and_warns(tiny_tokenizer):
    """HF Llama zeroes the pad row (padding_idx): a pad baseline runs each path through RMSNorm(0)."""
    model = llama_reward(tiny_tokenizer)
    assert not model.get_input_embeddings().weight[tiny_tokenizer.pad_token_id].any()
    prompts, completions = texts(2, seed=2)
    with pytest.warns(UserWarning, match="reference-text baseline"):
        result = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=32)
    assert not within_tolerance(result).any()


def test_word_sums_keep_pieces_and_totals(tiny_tokenizer):
    model = gpt2_reward(tiny_tokenizer)
    prompts, completions = ["The screen was"], [" unbelievably xylophonic and good."]
    result = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=8)
    words = word_attributions(result)
    tokens = result.df
    # A multi-piece word: its pieces sum to the word's attribution.
    counts = tokens.groupby("word").size()
    multi = int(counts[counts > 1].index[0])
    pieces = tokens[tokens["word"] == multi]
    word = words[words["word"] == multi].iloc[0]
    assert word["attribution"] == pytest.approx(pieces["attribution"].sum(), abs=1e-12)
    assert word["word_text"] == "".join(pieces["token"]).strip() and " " not in word["word_text"]
    assert word_text_set(words) >= {"The", "screen", "was", "unbelievably", "xylophonic", "and"}
    assert words["attribution"].sum() == pytest.approx(tokens["attribution"].sum(), abs=1e-9)
    means = mean_word_attributions(pd.concat([words, words.assign(text=1)]), min_count=2)
    assert set(means.columns) == {"word_text", "mean_attribution", "count"} and (means["count"] == 2).all()
    assert "unbelievably" in set(means["word_text"])


def word_text_set(words: pd.DataFrame) -> set[str]:
    return set(words["word_text"])


def test_result_round_trips_parquet_and_renders(tiny_tokenizer, tmp_path):
    model = gpt2_reward(tiny_tokenizer)
    prompts, completions = texts(3)
    result = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=4)
    path = tmp_path / "attr.parquet"
    result.df.to_parquet(path)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, result.df)
    again = RewardAttributionResult.from_cache(back, result.cache_meta())
    assert again.meta["texts"] == result.meta["texts"]
    html = str(result.to_html())
    assert html.count('class="tokens"') == 3 and "attribution = " in html
    import matplotlib

    matplotlib.use("Agg")
    ax = result.plot()
    assert len(ax.patches) == (result.df["text"] == 0).sum()


@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_feature_ablation_on_the_linear_toy_equals_the_closed_form(tiny_tokenizer, baseline):
    model = LinearToy(len(tiny_tokenizer))
    prompts, completions = texts(4)
    result = reward_feature_ablation(model, tiny_tokenizer, prompts, completions, baseline=baseline, max_batch_tokens=64)
    assert result.meta["method"] == "feature_ablation"
    table = model.get_input_embeddings().weight.detach().double()
    w = model.score.weight.detach().double()[0]
    for i, seq in enumerate(models.reward_input_ids(tiny_tokenizer, prompts, completions, 32)):
        x = table[seq]
        b = torch.zeros_like(x) if baseline == "zero" else table[[tiny_tokenizer.pad_token_id] * len(seq)]
        got = result.df[result.df["text"] == i]["attribution"].to_numpy()
        np.testing.assert_allclose(got, ((x - b) @ w).numpy(), atol=1e-5)
        # A linear reward has no interactions: delta is float32 rounding of sums of this size (1.05e-5 seen on 1 thread).
        assert abs(result.meta["texts"][i]["delta"]) < 1e-6 * max(1.0, float(np.abs(got).sum())) + 1e-5


def test_feature_ablation_on_gpt2_is_a_one_token_occlusion(tiny_tokenizer):
    model = gpt2_reward(tiny_tokenizer)
    prompts, completions = texts(3)
    result = reward_feature_ablation(model, tiny_tokenizer, prompts, completions)
    expected = models.score_texts(model, tiny_tokenizer, prompts, completions).numpy()
    np.testing.assert_allclose(result.texts["reward"].to_numpy(), expected, atol=1e-5)
    ids = models.reward_input_ids(tiny_tokenizer, prompts, completions, 64)[1]
    occluded = list(ids)
    occluded[3] = tiny_tokenizer.pad_token_id
    drop = expected[1] - float(models.score_rewards(model, [occluded], tiny_tokenizer.pad_token_id).detach()[0])
    assert result.df[(result.df["text"] == 1) & (result.df["position"] == 3)]["attribution"].item() == pytest.approx(drop, abs=1e-5)
