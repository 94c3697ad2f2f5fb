"""Shared-prefix packing: packed rewards equal padded ones, for values and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPTNeoXConfig,
    GPTNeoXForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from rlhf_lens.models import fit_to_context, reward_input_ids, reward_input_parts, score_rewards
from rlhf_lens.packing import first_fit_decreasing, pack_texts, packed_rewards

PAD = 0


def scorers():
    torch.manual_seed(0)
    gpt2 = GPT2ForSequenceClassification(
        GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            vocab_size=60,
            n_positions=40,
            num_labels=1,
            pad_token_id=PAD,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    llama = LlamaForSequenceClassification(
        LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=60,
            max_position_embeddings=40,
            num_labels=1,
            pad_token_id=PAD,
        )
    )
    neox = GPTNeoXForSequenceClassification(
        GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=60,
            max_position_embeddings=40,
            num_labels=1,
            pad_token_id=PAD,
        )
    )
    return {"gpt2": gpt2.eval(), "llama": llama.eval(), "gpt_neox": neox.eval()}


def random_texts(seed: int) -> list[tuple[list[int], list[int]]]:
    """Prompts with 1-4 completions each (some empty), and a text with no prefix."""
    g = torch.Generator().manual_seed(seed)
    randint = lambda lo, hi, n=None: torch.randint(lo, hi, (n,) if n is not None else (1,), generator=g).tolist()  # noqa: E731
    texts = []
    for _ in range(6):
        prefix = [1] + randint(2, 60, randint(0, 8)[0])
        texts += [(prefix, randint(2, 60, randint(0, 12)[0])) for _ in range(randint(1, 5)[0])]
    texts.append(([], [5, 6, 7]))
    order = torch.randperm(len(texts), generator=g).tolist()  # texts of a prompt need not be adjacent
    return [texts[i] for i in order]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_packed_rewards_equal_padded_rewards_and_gradients(arch):
    model = scorers()[arch]
    texts = random_texts(seed=1)
    batch = pack_texts(texts, PAD)
    assert batch.n_tokens < sum(len(p) + len(s) for p, s in texts)  # prefixes are shared
    packed = packed_rewards(model, batch)
    padded = score_rewards(model, [p + s for p, s in texts], PAD)
    assert packed.tolist() == pytest.approx(padded.tolist(), abs=1e-5)
    weights = torch.randn(len(texts))
    grads_packed = torch.autograd.grad((packed * weights).sum(), list(model.parameters()))
    grads_padded = torch.autograd.grad((padded * weights).sum(), list(model.parameters()))
    for a, b in zip(grads_packed, grads_padded):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_packed_rewards_subtract_the_centring_offset():
    model = scorers()["gpt2"]
    batch = pack_texts(random_texts(seed=2), PAD)
    with torch.no_grad():
        before = packed_rewards(model, batch)
        model.config.reward_offset = 0.5
        after = packed_rewards(model, batch)
    assert (before - after).tolist() == pytest.approx([0.5] * len(before), abs=1e-6)


def test_a_completion_sees_its_prefix_and_itself_only():
    batch = pack_texts([([1, 2], [3, 4]), ([1, 2], [5]), ([9], [])], PAD, min_width=10)
    (row,) = {int(r) for r in batch.last[0]}  # everything fits one row
    allowed = batch.allowed[row]
    columns = {int(t): c for c, t in enumerate(batch.input_ids[row].tolist()) if t != PAD}
    assert allowed[columns[4]].nonzero().flatten().tolist() == [columns[1], columns[2], columns[3], columns[4]]
    assert allowed[columns[5]].nonzero().flatten().tolist() == [columns[1], columns[2], columns[5]]
    assert not allowed[columns[9], columns[1]] and not allowed[columns[1], columns[9]]
    assert batch.position_ids[row, columns[5]] == 2 and batch.position_ids[row, columns[4]] == 3
    assert batch.last[1].tolist() == [columns[4], columns[5], columns[9]]  # an empty completion reads its prefix
    assert allowed.any(-1).all()  # padding attends somewhere: no NaN


def test_first_fit_decreasing_fills_rows_without_overflow():
    rows = first_fit_decreasing([5, 3, 4, 2, 6, 1], width=7)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum([5, 3, 4, 2, 6, 1][i] for i in row) <= 7 for row in rows)
    assert len(rows) == 3


def test_a_model_without_a_score_head_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="no `score` head.*ForSequenceClassification"):
        packed_rewards(torch.nn.Linear(2, 1), pack_texts([([1], [2])], PAD))
    with pytest.raises(TypeError, match="no `score` head"):
        score_rewards(torch.nn.Linear(2, 1), [[1, 2]], PAD)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_text_holding_the_pad_id_is_scored_at_its_last_token_padded_and_packed(arch):
    # A feedback file may hold "<|endoftext|>" (the pad/EOS id) inside a completion: both paths score
    # the text's last token, as the text alone (no padding at all) is scored.
    model = scorers()[arch]
    texts = [([PAD, 3, 4], [5, PAD]), ([7, 8], [9, 10, 11, 12])]  # the first ends in the pad id
    with torch.no_grad():
        alone = [float(model.score(model.base_model(input_ids=torch.tensor([p + s])).last_hidden_state[0, -1])) for p, s in texts]
        padded = score_rewards(model, [p + s for p, s in texts], PAD).tolist()
        packed = packed_rewards(model, pack_texts(texts, PAD)).tolist()
    assert padded == pytest.approx(alone, abs=1e-5)
    assert packed == pytest.approx(alone, abs=1e-5)


def test_an_empty_text_is_refused():
    with pytest.raises(ValueError, match="text 1 is empty"):
        pack_texts([([1], [2]), ([], [])], PAD)


def test_reward_input_parts_split_the_left_truncated_text(tiny_tokenizer):
    prompts, completions = ["the room was nice. " * 30, "My phone"], [" the staff were kind.", " broke " * 40]
    with pytest.warns(UserWarning, match="truncated from the left"):
        parts = reward_input_parts(tiny_tokenizer, prompts, completions, context=32)
    with pytest.warns(UserWarning):
        whole = reward_input_ids(tiny_tokenizer, prompts, completions, context=32)
    untruncated = reward_input_ids(tiny_tokenizer, prompts, completions, context=10**6)
    for (prefix, suffix), ids, full in zip(parts, whole, untruncated):
        assert prefix + suffix == ids == fit_to_context(full, 32)
    assert parts[0][1] == tiny_tokenizer(completions[0], add_special_tokens=False)["input_ids"]  # the completion survives
    assert parts[1][0] == []  # a completion longer than the context leaves no prefix


def causal_lms():
    """The scorers' three architectures as causal LMs (same sizes)."""
    from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM

    models = {}
    for arch, scorer in scorers().items():
        config = scorer.config
        config.num_labels = 1
        head = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "gpt_neox": GPTNeoXForCausalLM}[arch]
        torch.manual_seed(1)
        models[arch] = head(config).eval()
    return models


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_packed_completion_logprobs_and_gradients_equal_the_padded_pass(arch):
    from rlhf_lens.models import completion_logits
    from rlhf_lens.packing import packed_completion_logits

    model = causal_lms()[arch]
    texts = [(p, c if c else [7]) for p, c in random_texts(3) if p]  # groups sharing prompts, in mixed order
    prompts, completions = [t[0] for t in texts], [t[1] for t in texts]

    def logprobs(fn):
        model.zero_grad()
        logits, targets, mask = fn(model, prompts, completions, PAD)
        out = torch.log_softmax(logits / 0.7, -1).gather(-1, targets[:, :, None]).squeeze(-1) * mask
        (out * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded, padded_grads = logprobs(completion_logits)
    packed, packed_grads = logprobs(packed_completion_logits)
    assert packed.shape == padded.shape
    assert torch.allclose(packed, padded, atol=1e-5)
    assert padded_grads.keys() == packed_grads.keys()
    for name in padded_grads:
        assert torch.allclose(packed_grads[name], padded_grads[name], atol=1e-5), name


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_packed_values_and_gradients_equal_the_padded_pass(arch):
    from rlhf_lens.models import TokenValues, completion_values
    from rlhf_lens.packing import packed_completion_values

    values_model = TokenValues(scorers()[arch])
    texts = [(p, c if c else [7]) for p, c in random_texts(4) if p]
    prompts, completions = [t[0] for t in texts], [t[1] for t in texts]

    def values(fn):
        values_model.zero_grad()
        out = fn(values_model, prompts, completions, PAD)
        (out * torch.linspace(-1.0, 1.0, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in values_model.named_parameters() if p.grad is not None}

    padded, padded_grads = values(completion_values)
    packed, packed_grads = values(packed_completion_values)
    assert torch.allclose(packed, padded, atol=1e-5)
    for name in padded_grads:
        assert torch.allclose(packed_grads[name], padded_grads[name], atol=1e-5), name


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
def test_score_texts_packs_shared_prompts_and_equals_the_padded_pass(arch, tiny_tokenizer):
    from rlhf_lens.models import context_length, score_texts
    from tests.tiny_models import tiny_model

    model = tiny_model(arch, tiny_tokenizer, head="score")
    model.config.reward_offset = 0.25
    prompts = ["The soup was", "The soup was", "The soup was", "Service:", "Service:", "A long prompt about the pasta and"]
    completions = [" great.", " cold and bland", "", " slow", " friendly and quick, we loved it", " the wine"]
    ids = reward_input_ids(tiny_tokenizer, prompts, completions, context_length(model))
    with torch.no_grad():
        padded = score_rewards(model, ids, tiny_tokenizer.pad_token_id)
    packed = score_texts(model, tiny_tokenizer, prompts, completions, batch_size=4)  # two passes: a group split across them
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)


def test_a_large_group_is_split_into_segments_of_bounded_length():
    """64 completions of one prompt: segments of at most max_segment tokens, each repeating the prompt, same rewards."""
    model = scorers()["gpt2"]
    prefix = [1, 5, 6, 7]
    texts = [(prefix, [10 + (i % 40), 11, 12 + (i % 7)][: 1 + i % 3]) for i in range(64)]
    whole, split = pack_texts(texts, PAD, min_width=1), pack_texts(texts, PAD, min_width=1, max_segment=40)
    assert whole.input_ids.shape[1] == 4 + sum(len(t[1]) for t in texts) and split.input_ids.shape[1] <= 40
    assert int((split.input_ids == 5).sum()) > 1  # the prompt is written once per segment
    with torch.no_grad():
        torch.testing.assert_close(packed_rewards(model, split), packed_rewards(model, whole), atol=1e-5, rtol=1e-5)
