"""Policy and alignment attribution (rlhf_lens.analyses.attribution.policy): Captum's LLM API against log-probabilities
worked out with `models.completion_logprobs`, completeness of the log-ratio integrated gradients, batching, a planted
token and the results' tables and views."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from rlhf_lens import models
from rlhf_lens.analyses.attribution.policy import (
    AlignmentAttributionResult,
    AlignmentLogRatioResult,
    PolicyAttributionResult,
    alignment_attribution,
    alignment_log_ratio,
    mean_word_log_ratios,
    policy_attribution,
    word_log_ratios,
)

# --------------------------------------------------------------------------- models and texts


def gpt2_lm(tokenizer, *, seed: int = 0, initializer_range: float = 0.3, context: int = 64):
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=len(tokenizer), n_positions=context, initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def llama_lm(tokenizer, *, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def neox_lm(tokenizer, *, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return transformers.GPTNeoXForCausalLM(config).eval()


ARCHITECTURES = {"gpt2": gpt2_lm, "llama": llama_lm, "gpt-neox": neox_lm}


def baseline_for(arch: str, tokenizer) -> int | None:
    """HF Llama zeroes the pad row (padding_idx), where integrated gradients cannot start: use " the" there."""
    return tokenizer(" the", add_special_tokens=False)["input_ids"][0] if arch == "llama" else None


def texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short reviews split into (first sentence, second sentence)."""
    from rlhf_lens.tasks import get_task

    prompts, completions = [], []
    for row in get_task("sentiment").corpus(n, seed=seed):
        sentences = row["text"].split(". ")
        prompts.append(sentences[0].rstrip(".") + ".")
        completions.append(" " + sentences[1].rstrip(".") + "." if len(sentences) > 1 else " Fine.")
    return prompts, completions


def ids_of(tokenizer, prompts, completions) -> tuple[list[list[int]], list[list[int]]]:
    return models.encode_prompts(tokenizer, prompts), tokenizer(list(completions), add_special_tokens=False)["input_ids"]


@torch.no_grad()
def logprobs_by_hand(model, prefix: list[int], completion: list[int], pad_id: int) -> np.ndarray:
    """log p(completion token | prefix) of one text: (gen_len,)."""
    logprobs, _ = models.completion_logprobs(model, [prefix], [completion], pad_id)
    return logprobs[0].double().numpy()


def rows_of(result, text: int) -> pd.DataFrame:
    return result.df[result.df["text"] == text]


# --------------------------------------------------------------------------- policy attribution (Captum's LLM API)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_feature_ablation_is_the_logprob_lost_when_one_prompt_token_is_replaced(tiny_tokenizer, arch):
    model = ARCHITECTURES[arch](tiny_tokenizer)
    prompts, completions = texts(2, seed=1)
    pad = tiny_tokenizer.pad_token_id
    result = policy_attribution(model, tiny_tokenizer, prompts, completions, method="feature_ablation")
    assert isinstance(result, PolicyAttributionResult) and result.meta["method"] == "feature_ablation"
    matrix = result.token_attr
    for i, (prefix, completion) in enumerate(zip(*ids_of(tiny_tokenizer, prompts, completions))):
        full = logprobs_by_hand(model, prefix, completion, pad)  # (gen_len,)
        assert result.meta["texts"][i]["logprob"] == pytest.approx(full.sum(), abs=1e-5)
        rows = rows_of(result, i)
        assert list(rows["position"]) == list(range(1, len(prefix)))  # BOS is held fixed and has no row
        for position in (1, len(prefix) // 2, len(prefix) - 1):
            occluded = list(prefix)
            occluded[position] = pad
            drop = full - logprobs_by_hand(model, occluded, completion, pad)  # (gen_len,)
            assert rows[rows["position"] == position]["attribution"].item() == pytest.approx(drop.sum(), abs=1e-4)
            per_target = matrix[(matrix["text"] == i) & (matrix["input_position"] == position)].sort_values("target_position")
            np.testing.assert_allclose(per_target["attribution"].to_numpy(), drop, atol=1e-4)
            assert list(per_target["target_position"]) == list(range(len(prefix), len(prefix) + len(completion)))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_integrated_gradients_add_up_to_the_logprob_difference(tiny_tokenizer, arch):
    model = ARCHITECTURES[arch](tiny_tokenizer)
    prompts, completions = texts(2, seed=2)
    baseline = baseline_for(arch, tiny_tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no text may miss completeness
        result = policy_attribution(model, tiny_tokenizer, prompts, completions, baseline_id=baseline)
    base_id = tiny_tokenizer.pad_token_id if baseline is None else baseline
    for i, (prefix, completion) in enumerate(zip(*ids_of(tiny_tokenizer, prompts, completions))):
        full = logprobs_by_hand(model, prefix, completion, tiny_tokenizer.pad_token_id)
        empty = logprobs_by_hand(model, prefix[:1] + [base_id] * (len(prefix) - 1), completion, tiny_tokenizer.pad_token_id)
        entry = result.meta["texts"][i]
        assert entry["logprob"] == pytest.approx(full.sum(), abs=1e-4)
        assert entry["baseline_logprob"] == pytest.approx(empty.sum(), abs=1e-4)
        gap = full.sum() - empty.sum()
        total = rows_of(result, i)["attribution"].sum()
        assert abs(total - gap) <= 0.01 * abs(gap) + 1e-3
        assert total - gap == pytest.approx(entry["delta"], abs=1e-5)
    # The per-target matrix sums over targets to the sequence attribution.
    by_input = result.token_attr.groupby(["text", "input_position"])["attribution"].sum().to_numpy()
    np.testing.assert_allclose(by_input, result.df.sort_values(["text", "position"])["attribution"].to_numpy(), atol=1e-5)


def test_each_completion_tokens_row_adds_up_to_its_own_logprob_difference(tiny_tokenizer):
    model = gpt2_lm(tiny_tokenizer)
    prompts, completions = texts(1, seed=3)
    result = policy_attribution(model, tiny_tokenizer, prompts, completions, n_steps=64)
    assert result.meta["texts"][0]["steps"] == 64
    (prefix,), (completion,) = ids_of(tiny_tokenizer, prompts, completions)
    pad = tiny_tokenizer.pad_token_id
    gap = logprobs_by_hand(model, prefix, completion, pad) - logprobs_by_hand(
        model, prefix[:1] + [pad] * (len(prefix) - 1), completion, pad
    )
    per_target = result.token_attr.groupby("target_position")["attribution"].sum().to_numpy()
    np.testing.assert_allclose(per_target, gap, atol=0.01 * np.abs(gap).max() + 1e-3)
    tokens = result.token_attr.drop_duplicates("target_position")["target_token"].tolist()
    assert tokens == [tiny_tokenizer.decode([t]) for t in completion]


def test_policy_attribution_refuses_what_it_cannot_do(tiny_tokenizer):
    model = gpt2_lm(tiny_tokenizer)
    with pytest.raises(ValueError, match="one completion per prompt"):
        policy_attribution(model, tiny_tokenizer, ["a", "b"], [" c"])
    with pytest.raises(ValueError, match="method must be one of"):
        policy_attribution(model, tiny_tokenizer, ["a"], [" c"], method="saliency")
    with pytest.raises(ValueError, match="feature ablation has no steps"):
        policy_attribution(model, tiny_tokenizer, ["a"], [" c"], method="feature_ablation", n_steps=8)
    with pytest.raises(ValueError, match=r"completion\(s\) \[1\] have no tokens"):
        alignment_log_ratio(model, model, tiny_tokenizer, ["a", "b"], [" c", ""])


# --------------------------------------------------------------------------- alignment log-ratio


def test_log_ratio_is_the_difference_of_completion_logprobs(tiny_tokenizer):
    policy, reference = gpt2_lm(tiny_tokenizer, seed=1), gpt2_lm(tiny_tokenizer, seed=2)
    prompts, completions = texts(5)
    result = alignment_log_ratio(policy, reference, tiny_tokenizer, prompts, completions, max_batch_tokens=40)
    assert isinstance(result, AlignmentLogRatioResult)
    pad = tiny_tokenizer.pad_token_id
    for i, (prefix, completion) in enumerate(zip(*ids_of(tiny_tokenizer, prompts, completions))):
        rows = rows_of(result, i)
        expected = logprobs_by_hand(policy, prefix, completion, pad) - logprobs_by_hand(reference, prefix, completion, pad)
        np.testing.assert_allclose(rows["log_ratio"].to_numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(rows["log_ratio"], rows["logprob"] - rows["ref_logprob"], atol=1e-12)
        assert list(rows["position"]) == list(range(len(prefix), len(prefix) + len(completion)))
        assert list(rows["token_id"]) == completion
        assert result.meta["texts"][i]["log_ratio"] == pytest.approx(expected.sum(), abs=1e-4)


def boosted(model: torch.nn.Module, token_id: int, bonus: float) -> torch.nn.Module:
    """The same model with `bonus` added to one token's logit (a bias on the unembedding)."""
    policy = copy.deepcopy(model)
    bias = torch.zeros(policy.lm_head.out_features)
    bias[token_id] = bonus
    policy.lm_head.bias = torch.nn.Parameter(bias)
    return policy


ZORP_PROMPTS = ["The plot was pleasant.", "It had a noisy room.", "The battery is great.", "It has a useless performance."]
ZORP_COMPLETIONS = [" I saw a zorp there.", " The room had no view.", " It was a zorp, really.", " Then a zorp came by."]


def test_a_planted_logit_bonus_shows_as_the_largest_log_ratio(tiny_tokenizer):
    """Policy = reference + 4 on the logit of "z": the log-ratio peaks on the "z" of each " zorp", and "zorp" is the
    word whose log-ratio is highest; every other token is made a little less likely."""
    z = tiny_tokenizer.convert_tokens_to_ids("z")
    reference = gpt2_lm(tiny_tokenizer, initializer_range=0.02)
    policy = boosted(reference, z, 4.0)
    result = alignment_log_ratio(policy, reference, tiny_tokenizer, ZORP_PROMPTS, ZORP_COMPLETIONS)
    df = result.df
    for text, rows in df.groupby("text"):
        top = rows.loc[rows["log_ratio"].idxmax()]
        if "zorp" in ZORP_COMPLETIONS[text]:
            assert top["token_id"] == z and top["log_ratio"] > 3.0
        else:
            assert (rows["log_ratio"] < 0).all()
    assert (df[df["token_id"] != z]["log_ratio"] < 0).all()
    words = word_log_ratios(result)
    zorps = words[words["word_text"].str.startswith("zorp")]
    assert len(zorps) == 3 and (zorps["log_ratio"] > 3.0).all()
    means = mean_word_log_ratios(result, min_count=3)
    assert list(means.columns) == ["word_text", "mean_log_ratio", "count"]
    assert means.iloc[0]["word_text"] == "zorp" and means.iloc[0]["count"] == 3
    assert mean_word_log_ratios(result, min_count=4)["word_text"].tolist() == []  # no word occurs 4 times
    # The planted bonus also drives the attribution: completeness holds and the log-ratio is the one above.
    attribution = alignment_attribution(policy, reference, tiny_tokenizer, ZORP_PROMPTS, ZORP_COMPLETIONS, n_steps=32)
    np.testing.assert_allclose(attribution.texts["log_ratio"], result.texts["log_ratio"], atol=1e-4)


# --------------------------------------------------------------------------- alignment attribution


def within_tolerance(result: AlignmentAttributionResult, tolerance: float = 0.01) -> np.ndarray:
    t = result.texts
    return (t["delta"].abs() <= tolerance * (t["log_ratio"] - t["baseline_log_ratio"]).abs() + 1e-3).to_numpy()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_alignment_attribution_meets_completeness(tiny_tokenizer, arch):
    policy, reference = ARCHITECTURES[arch](tiny_tokenizer, seed=1), ARCHITECTURES[arch](tiny_tokenizer, seed=2)
    prompts, completions = texts(6, seed=4)
    baseline = baseline_for(arch, tiny_tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no text may miss completeness
        result = alignment_attribution(policy, reference, tiny_tokenizer, prompts, completions, baseline_id=baseline)
    assert within_tolerance(result).all()
    ratio = alignment_log_ratio(policy, reference, tiny_tokenizer, prompts, completions)
    np.testing.assert_allclose(result.texts["log_ratio"], ratio.texts["log_ratio"], atol=1e-4)
    sums = result.df.groupby("text")["attribution"].sum().to_numpy()
    t = result.texts
    np.testing.assert_allclose(sums, (t["log_ratio"] - t["baseline_log_ratio"] + t["delta"]).to_numpy(), atol=1e-4)
    # BOS is held fixed and the last completion token is context of nothing: both get exactly 0.
    firsts = result.df.groupby("text").head(1)
    lasts = result.df.groupby("text").tail(1)
    assert (firsts["attribution"] == 0).all() and (lasts["attribution"] == 0).all()
    assert set(result.df["part"]) == {"prompt", "completion"}


def test_adaptive_steps_are_needed_and_the_baseline_is_an_all_pad_context(tiny_tokenizer):
    policy, reference = gpt2_lm(tiny_tokenizer, seed=1), gpt2_lm(tiny_tokenizer, seed=2)
    prompts, completions = texts(8, seed=5)
    adaptive = alignment_attribution(policy, reference, tiny_tokenizer, prompts, completions)
    assert within_tolerance(adaptive).all()
    with pytest.warns(UserWarning, match="miss completeness"):
        fixed = alignment_attribution(policy, reference, tiny_tokenizer, prompts, completions, n_steps=2)
    assert not within_tolerance(fixed).all() and set(fixed.texts["steps"]) == {2}
    pad = tiny_tokenizer.pad_token_id
    (prefix, *_), (completion, *_) = ids_of(tiny_tokenizer, prompts, completions)
    context = prefix[:1] + [pad] * (len(prefix) - 1)  # the completion tokens are scored after pads too

    def baseline_ratio(model):
        ids = context + [pad] * (len(completion) - 1) + completion[-1:]
        logits = model(torch.tensor([ids])).logits[0, len(prefix) - 1 : -1]  # (gen_len, vocab)
        return torch.log_softmax(logits, -1)[torch.arange(len(completion)), torch.tensor(completion)].sum().item()

    with torch.no_grad():
        expected = baseline_ratio(policy) - baseline_ratio(reference)
    assert adaptive.meta["texts"][0]["baseline_log_ratio"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.filterwarnings("ignore:.*miss completeness:UserWarning")  # few steps on purpose
def test_batched_and_one_at_a_time_agree(tiny_tokenizer):
    policy, reference = gpt2_lm(tiny_tokenizer, seed=1), gpt2_lm(tiny_tokenizer, seed=2)
    prompts, completions = texts(5, seed=6)
    together = alignment_attribution(policy, reference, tiny_tokenizer, prompts, completions, n_steps=8)
    chunked = alignment_attribution(policy, reference, tiny_tokenizer, prompts, completions, n_steps=8, max_batch_tokens=300)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        alone = alignment_attribution(policy, reference, tiny_tokenizer, [p], [c], n_steps=8)
        expected = alone.df["attribution"].to_numpy()
        np.testing.assert_allclose(rows_of(together, i)["attribution"].to_numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(rows_of(chunked, i)["attribution"].to_numpy(), expected, atol=1e-4)
        assert together.meta["texts"][i]["delta"] == pytest.approx(alone.meta["texts"][0]["delta"], abs=1e-4)


def test_a_policy_against_itself_has_no_log_ratio_and_no_attribution(tiny_tokenizer):
    model = gpt2_lm(tiny_tokenizer)
    prompts, completions = texts(3, seed=7)
    ratio = alignment_log_ratio(model, copy.deepcopy(model), tiny_tokenizer, prompts, completions)
    np.testing.assert_allclose(ratio.df["log_ratio"], 0.0, atol=1e-6)
    attribution = alignment_attribution(model, model, tiny_tokenizer, prompts, completions, n_steps=4)
    np.testing.assert_allclose(attribution.df["attribution"], 0.0, atol=1e-6)
    np.testing.assert_allclose(attribution.texts[["log_ratio", "baseline_log_ratio", "delta"]].to_numpy(), 0.0, atol=1e-6)


def test_a_zero_pad_row_on_llama_misses_completeness_and_warns(tiny_tokenizer):
    policy, reference = llama_lm(tiny_tokenizer, seed=1), llama_lm(tiny_tokenizer, seed=2)
    assert not policy.get_input_embeddings().weight[tiny_tokenizer.pad_token_id].any()
    prompts, completions = texts(2, seed=2)
    with pytest.warns(UserWarning, match="pass another baseline_id"):
        result = alignment_attribution(policy, reference, tiny_tokenizer, prompts, completions, n_steps=32)
    assert not within_tolerance(result).all()


@pytest.mark.filterwarnings("ignore:.*miss completeness:UserWarning")  # few steps on purpose
def test_long_texts_keep_their_completion_and_the_models_modes(tiny_tokenizer):
    policy, reference = gpt2_lm(tiny_tokenizer, seed=1, context=24), gpt2_lm(tiny_tokenizer, seed=2, context=24)
    policy.train()
    prompts, completions = texts(2, seed=8)
    prompts[0] = " ".join([prompts[0]] * 8)
    with pytest.warns(UserWarning, match="truncated from the left"):
        result = alignment_attribution(policy, reference, tiny_tokenizer, prompts, completions, n_steps=16)
    assert policy.training and not reference.training
    long_text = rows_of(result, 0)
    assert len(long_text) == 24 and long_text["attribution"].iloc[0] != 0  # BOS was cut: the first kept token counts
    n_completion = len(tiny_tokenizer(completions[0], add_special_tokens=False)["input_ids"])
    assert (long_text["part"] == "completion").sum() == n_completion


# --------------------------------------------------------------------------- results


@pytest.mark.filterwarnings("ignore:.*miss completeness:UserWarning")  # few steps on purpose
def test_results_round_trip_and_render(tiny_tokenizer, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    policy, reference = gpt2_lm(tiny_tokenizer, seed=1), gpt2_lm(tiny_tokenizer, seed=2)
    prompts, completions = texts(2)
    prompts[1] = "A <b>bold</b> & odd prompt."
    results = [
        policy_attribution(policy, tiny_tokenizer, prompts, completions, method="feature_ablation"),
        alignment_log_ratio(policy, reference, tiny_tokenizer, prompts, completions),
        alignment_attribution(policy, reference, tiny_tokenizer, prompts, completions, n_steps=8),
    ]
    for result in results:
        path = tmp_path / f"{type(result).__name__}.parquet"
        result.df.to_parquet(path)
        back = type(result).from_cache(pd.read_parquet(path), result.cache_meta())
        pd.testing.assert_frame_equal(back.df, result.df)
        assert back.meta == result.meta
        html = str(result.to_html())
        assert html.count('class="tokens"') == 2 and "<b>bold</b>" not in html and "&lt;b&gt;" in html
        assert result.headlines() and result.headlines()[0][1] == "2"
        ax = result.plot(text=1)
        assert len(ax.patches) == len(rows_of(result, 1))
    pd.testing.assert_frame_equal(results[0].token_attr, type(results[0]).from_cache(results[0].df, results[0].cache_meta()).token_attr)
    assert "log ratio = " in str(results[1].figures_html())


def test_no_texts_and_an_empty_prompt_give_empty_rows(tiny_tokenizer):
    model = gpt2_lm(tiny_tokenizer)
    for result in (
        policy_attribution(model, tiny_tokenizer, [], []),
        alignment_log_ratio(model, model, tiny_tokenizer, [], []),
        alignment_attribution(model, model, tiny_tokenizer, [], []),
    ):
        assert result.df.empty and list(result.df.columns) == list(type(result).columns)
        assert str(result.to_html())
    empty_prompt = policy_attribution(model, tiny_tokenizer, [""], [" It was good."], method="feature_ablation")
    assert empty_prompt.df.empty and empty_prompt.token_attr.empty  # BOS alone: nothing to attribute
    assert empty_prompt.meta["texts"][0]["logprob"] < 0
