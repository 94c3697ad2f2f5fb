"""Integrated gradients of generative reward models (rlhf_lens.analyses.attribution.generative): the target is
`generative_rewards`, closed form on a linear toy, completeness, batching, parts of the prefix."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlhf_lens import models
from rlhf_lens.analyses.attribution import word_attributions
from rlhf_lens.analyses.attribution.generative import generative_integrated_gradients, generative_token_parts
from tests.unit.analyses.test_attribution_reward import texts, within_tolerance

D_MODEL = 8
CRITIQUES = ["It is fine.", "Weak.", "  It says great things.  ", "Poor value.", "Good!"]


# --------------------------------------------------------------------------- models and texts


class _CumulativeBackbone(torch.nn.Module):
    """hidden[t] = sum of the embeddings of the real tokens up to t: linear in the embeddings."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, D_MODEL)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None):
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return SimpleNamespace(last_hidden_state=(embeds * attention_mask[:, :, None]).cumsum(1))


class LinearLM(torch.nn.Module):
    """logits[t] = W . sum_{s<=t} E[id_s]: with one-token verdicts the log-odds is (W[good] - W[bad]) . sum_t E[id_t]
    (the log-softmax normaliser cancels), so IG's exact answer is (E[id_t] - E[baseline_t]) . (W[good] - W[bad])."""

    def __init__(self, vocab: int, offset: float = 0.4, context: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.transformer = _CumulativeBackbone(vocab)
        self.lm_head = torch.nn.Linear(D_MODEL, vocab, bias=False)
        self.config = SimpleNamespace(n_positions=context, reward_offset=offset)

    @property
    def base_model(self):
        return self.transformer

    def get_input_embeddings(self):
        return self.transformer.embed

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask, position_ids=None):
        return SimpleNamespace(logits=self.lm_head(self.transformer(input_ids, attention_mask=attention_mask).last_hidden_state))


def gpt2_lm(tokenizer, *, context: int = 64, offset: float = 0.0):
    import transformers

    torch.manual_seed(0)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=len(tokenizer), n_positions=context, initializer_range=0.3, **ids
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.config.reward_offset = offset
    return model


def log_odds(model, tokenizer, ids: list[list[int]]) -> np.ndarray:
    """log p(good) - log p(bad) - offset after each id sequence, straight from `completion_logprobs`."""
    good, bad = (tokenizer(v, add_special_tokens=False)["input_ids"] for v in models.VERDICTS)
    with torch.no_grad():
        lp_good = models.sequence_logprobs(*models.completion_logprobs(model, ids, [good] * len(ids), tokenizer.pad_token_id))
        lp_bad = models.sequence_logprobs(*models.completion_logprobs(model, ids, [bad] * len(ids), tokenizer.pad_token_id))
    return (lp_good - lp_bad).numpy() - model.config.reward_offset


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("baseline", ["pad", "It was a product."])
def test_linear_toy_attributions_equal_the_closed_form(tiny_tokenizer, monkeypatch, baseline):
    monkeypatch.setattr(models, "VERDICTS", (" the", " was"))  # one token each in the tiny tokenizer
    good, bad = (tiny_tokenizer(v, add_special_tokens=False)["input_ids"] for v in models.VERDICTS)
    assert len(good) == len(bad) == 1
    model = LinearLM(len(tiny_tokenizer))
    prompts, completions = texts(4)
    result = generative_integrated_gradients(
        model, tiny_tokenizer, prompts, completions, critiques=CRITIQUES[:4], baseline=baseline, n_steps=3
    )
    np.testing.assert_allclose(
        result.texts["reward"].to_numpy(),
        models.generative_rewards(model, tiny_tokenizer, prompts, completions, CRITIQUES[:4]).numpy(),
        atol=1e-5,
    )
    table = model.get_input_embeddings().weight.detach().double()  # (vocab, d_model)
    w = (model.lm_head.weight[good[0]] - model.lm_head.weight[bad[0]]).detach().double()  # (d_model,)
    reference = tiny_tokenizer(baseline, add_special_tokens=False)["input_ids"]
    for i in range(4):
        rows = result.df[result.df["text"] == i]
        ids, content = rows["token_id"].tolist(), (rows["part"] != "template").to_numpy()
        base = [
            t if not c else tiny_tokenizer.pad_token_id if baseline == "pad" else reference[k % len(reference)]
            for k, (t, c) in enumerate(zip(ids, content))
        ]
        expected = ((table[ids] - table[base]) @ w).numpy()
        np.testing.assert_allclose(rows["attribution"].to_numpy(), expected, atol=1e-5)
        assert (rows["attribution"][~content] == 0).all()
        assert abs(result.meta["texts"][i]["delta"]) < 1e-5


@pytest.mark.parametrize("critiques", [None, "given", "model"])
def test_rewards_equal_generative_rewards_with_offset_and_left_truncation(tiny_tokenizer, critiques):
    model = gpt2_lm(tiny_tokenizer, context=48, offset=0.37)
    prompts, completions = texts(3)
    prompts[1] = " ".join([prompts[1]] * 8)  # longer than the 48-token context
    given = CRITIQUES[:3] if critiques == "given" else critiques
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = generative_integrated_gradients(
            model, tiny_tokenizer, prompts, completions, critiques=given, critique_max_tokens=4, n_steps=4
        )
    if critiques == "model":
        expected = models.judge_texts(model, tiny_tokenizer, prompts, completions, critique_first=True, critique_max_tokens=4).numpy()
        assert result.texts["critique"].tolist() == models.write_critiques(model, tiny_tokenizer, prompts, completions, max_new_tokens=4)
    else:
        expected = models.generative_rewards(model, tiny_tokenizer, prompts, completions, given).numpy()
    np.testing.assert_allclose(result.texts["reward"].to_numpy(), expected, atol=1e-5)
    assert result.meta["critiques"] == ("none" if critiques is None else critiques)
    # The baseline is the text's own ids with pad on every content token: its reward, read directly.
    for i, rows in result.df.groupby("text"):
        base = np.where(rows["part"] == "template", rows["token_id"], tiny_tokenizer.pad_token_id).tolist()
        assert result.meta["texts"][i]["baseline_reward"] == pytest.approx(log_odds(model, tiny_tokenizer, [base])[0], abs=1e-5)
    long_text = result.df[result.df["text"] == 1]
    assert len(long_text) == 48 - 4 and long_text["part"].iloc[0] == "prompt"  # BOS and the start were cut


def test_adaptive_steps_meet_completeness_where_four_steps_do_not(tiny_tokenizer):
    model = gpt2_lm(tiny_tokenizer)
    prompts, completions = texts(20, seed=1)
    adaptive = generative_integrated_gradients(model, tiny_tokenizer, prompts, completions)
    assert within_tolerance(adaptive).mean() >= 0.95
    assert adaptive.texts["steps"].max() > 16  # some texts needed more than the first pass
    with pytest.warns(UserWarning, match="miss completeness"):
        fixed = generative_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=4)
    assert within_tolerance(fixed).mean() < 0.95
    sums = adaptive.df.groupby("text")["attribution"].sum().to_numpy()
    t = adaptive.texts
    np.testing.assert_allclose(sums, (t["reward"] - t["baseline_reward"] + t["delta"]).to_numpy(), atol=1e-4)


@pytest.mark.filterwarnings("ignore:.*miss completeness")  # 8 steps: agreement, not completeness, is tested here
def test_batched_and_one_at_a_time_agree(tiny_tokenizer):
    model = gpt2_lm(tiny_tokenizer)
    prompts, completions = texts(4, seed=2)
    critiques = CRITIQUES[:4]
    together = generative_integrated_gradients(model, tiny_tokenizer, prompts, completions, critiques=critiques, n_steps=8)
    chunked = generative_integrated_gradients(
        model, tiny_tokenizer, prompts, completions, critiques=critiques, n_steps=8, max_batch_tokens=200
    )
    for i in range(4):
        alone = generative_integrated_gradients(model, tiny_tokenizer, [prompts[i]], [completions[i]], critiques=[critiques[i]], n_steps=8)
        expected = alone.df["attribution"].to_numpy()
        np.testing.assert_allclose(together.df[together.df["text"] == i]["attribution"].to_numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(chunked.df[chunked.df["text"] == i]["attribution"].to_numpy(), expected, atol=1e-4)
        assert together.meta["texts"][i]["reward"] == pytest.approx(alone.meta["texts"][0]["reward"], abs=1e-5)


def test_parts_cover_prompt_completion_critique_and_marks(tiny_tokenizer):
    prompt, completion, critique = "The screen was bright.", " It was great.", "  Says great.  "
    ids, parts = generative_token_parts(tiny_tokenizer, prompt, completion, critique)
    assert ids == models.encode_prompts(tiny_tokenizer, [models.verdict_prefix(prompt, completion, critique)])[0]

    def text_of(part: str) -> str:
        return "".join(tiny_tokenizer.decode([i]) for i, p in zip(ids[1:], parts[1:]) if p == part)

    assert parts[0] == "template"  # BOS
    assert text_of("prompt") == prompt and text_of("completion") == completion
    assert text_of("critique") == " Says great."
    assert text_of("template") == models.CRITIQUE_MARK + models.VERDICT_MARK
    assert parts[-len(tiny_tokenizer(models.VERDICT_MARK, add_special_tokens=False)["input_ids"]) :] == ["template"] * 7
    # No critique: no critique tokens and no critique mark.
    _, plain = generative_token_parts(tiny_tokenizer, prompt, completion, None)
    assert "critique" not in plain and plain.count("template") == 1 + 7
    # BPE merges " w" (prompt) and "as" (completion) into one token " was": it counts as prompt.
    ids, parts = generative_token_parts(tiny_tokenizer, "It w", "as great.", None)
    pieces = tiny_tokenizer.convert_ids_to_tokens(ids)
    assert pieces[1:3] == ["It", "Ġwas"] and parts[1:3] == ["prompt", "prompt"] and parts[3] == "completion"


def test_result_rows_words_and_errors(tiny_tokenizer):
    model = gpt2_lm(tiny_tokenizer)
    prompts, completions = ["The food"], [" was great."]
    result = generative_integrated_gradients(model, tiny_tokenizer, prompts, completions, critiques=["Tasty."], n_steps=4)
    words = word_attributions(result)
    # Each word lies in one part; the marks are words of their own, with zero attribution.
    assert words.groupby("word")["part"].nunique().max() == 1
    assert set(words["part"]) == {"prompt", "completion", "critique", "template"}
    assert (words[words["part"] == "template"]["attribution"] == 0).all()
    assert "Tasty." in set(words["word_text"]) and "great." in set(words["word_text"])
    assert str(result.to_html()).count('class="tokens"') == 1
    with pytest.raises(ValueError, match="critiques must be None"):
        generative_integrated_gradients(model, tiny_tokenizer, prompts, completions, critiques="Tasty.")
    with pytest.raises(ValueError, match="one critique per pair"):
        generative_integrated_gradients(model, tiny_tokenizer, prompts, completions, critiques=["a", "b"])
    with pytest.raises(ValueError, match="'zero' is not offered"):
        generative_integrated_gradients(model, tiny_tokenizer, prompts, completions, baseline="zero")
