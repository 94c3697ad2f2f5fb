"""The lean decoder against the HF models it reads: logits at every step, and samples equal to `models.sample`'s."""

from __future__ import annotations

import logging

import pytest
import torch

from rlhf_lens import decoding, models
from rlhf_lens.decoding import forward
from rlhf_lens.decoding.sampler import decode_step, prefill
from rlhf_lens.decoding.weights import read_weights
from tests.tiny_models import ARCHITECTURES, tiny_model

PROMPTS = ["The pasta was", "I ordered the soup and the service was", "", "Great", "The pasta was"]
"""Mixed lengths (left padding), an empty prompt, and a repeated one (prefilled once)."""


def likely_to_end(model: torch.nn.Module, tokenizer) -> torch.nn.Module:
    """Raise the EOS logit until about a third of `PROMPTS * 4`'s samples end within 12 tokens (with `models.sample`,
    seeds 100...), so that rows end early and the batch is compacted while others run on: every residual stream gets
    a shared component that the EOS unembedding row reads."""
    prompts = models.encode_prompts(tokenizer, PROMPTS * 4)
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] += 2.0
        for _ in range(80):
            drawn = models.sample(model, tokenizer, prompts, list(range(100, 100 + len(prompts))), max_new_tokens=12)
            if sum(drawn.finished) >= len(prompts) // 3:
                break
            model.get_output_embeddings().weight[tokenizer.eos_token_id, 0] += 0.25
    return model


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request, tiny_tokenizer):
    return likely_to_end(tiny_model(request.param, tiny_tokenizer), tiny_tokenizer)


def hf_logits(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> torch.Tensor:
    """HF's logits at each completion position of left-padded prompt+completion rows, completions of one length
    gen_len -> (rows, gen_len, vocab)."""
    gen_len = len(completions[0])
    ids, mask = models.pad_left([p + c for p, c in zip(prompts, completions)], pad_id)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask)).logits
    width = ids.shape[1] - gen_len
    return logits[:, width - 1 : width - 1 + gen_len].float()


@torch.no_grad()
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_samples_equal_models_sample(model, tiny_tokenizer, temperature):
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS * 4)
    seeds = list(range(100, 100 + len(prompts)))
    keep = temperature > 0
    expected = models.sample(model, tiny_tokenizer, prompts, seeds, max_new_tokens=24, temperature=temperature, with_logprobs=keep)
    got = decoding.sample(model, tiny_tokenizer, prompts, seeds, max_new_tokens=24, temperature=temperature, with_logprobs=keep)
    assert got.completion_ids == expected.completion_ids
    assert got.finished == expected.finished and got.texts == expected.texts and got.prompt_ids == expected.prompt_ids
    if keep:
        ended = sum(expected.finished)
        assert 0 < ended < len(prompts), f"{ended} of {len(prompts)} rows ended: the test needs early EOS and rows that run on"
        early = sum(f and len(c) <= 12 for f, c in zip(expected.finished, expected.completion_ids))
        assert early >= len(prompts) // 4, "the test needs a quarter of the rows to end early, so that the batch is compacted"
        torch.testing.assert_close(got.logprobs, expected.logprobs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.entropy, expected.entropy, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_sample_does_not_depend_on_its_batch(model, tiny_tokenizer):
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS)
    alone = [decoding.sample(model, tiny_tokenizer, [p], [7 + i], max_new_tokens=16).completion_ids[0] for i, p in enumerate(prompts)]
    together = decoding.sample(model, tiny_tokenizer, prompts, [7 + i for i in range(len(prompts))], max_new_tokens=16)
    assert together.completion_ids == alone


@pytest.fixture(params=["matmul", "sdpa"])
def attention(request, monkeypatch):
    """The CPU's one-query matmul attention, and the SDPA path CUDA takes."""
    monkeypatch.setattr(forward, "MATMUL_ONE_QUERY_ON_CPU", request.param == "matmul")
    return request.param


@torch.no_grad()
def test_logits_equal_hf_at_every_step(model, tiny_tokenizer, attention):
    """Teacher-forced through the lean decoder's own cache: prefill, then one decode step per completion token."""
    pad_id = tiny_tokenizer.pad_token_id
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS)
    drawn = models.sample(model, tiny_tokenizer, prompts, list(range(len(prompts))), max_new_tokens=12)
    completions = [c + [pad_id] * (12 - len(c)) for c in drawn.completion_ids]  # every row runs all 12 steps
    expected = hf_logits(model, drawn.prompt_ids, completions, pad_id)  # (rows, 12, vocab)
    weights = read_weights(model)
    state, logits = prefill(weights, drawn.prompt_ids, pad_id, 12, torch.device("cpu"))
    steps = [logits]
    for t in range(11):
        steps.append(decode_step(weights, state, torch.tensor([c[t] for c in completions])))
    got = torch.stack(steps, dim=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_weights_follow_the_model_after_an_update(tiny_tokenizer):
    """The decoder reads the model's current weights at each call: a trained policy samples as its HF forward does."""
    model = tiny_model("llama", tiny_tokenizer)
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS)
    before = decoding.sample(model, tiny_tokenizer, prompts, [1] * len(prompts), max_new_tokens=10).completion_ids
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(3.0)
    expected = models.sample(model, tiny_tokenizer, prompts, [1] * len(prompts), max_new_tokens=10).completion_ids
    after = decoding.sample(model, tiny_tokenizer, prompts, [1] * len(prompts), max_new_tokens=10).completion_ids
    assert after == expected and after != before


def test_an_unsupported_model_falls_back_with_a_note(tiny_tokenizer, caplog):
    import transformers

    torch.manual_seed(0)
    config = transformers.GPTJConfig(
        vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4,
        eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id,
    )  # fmt: skip
    model = transformers.GPTJForCausalLM(config).eval()
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS)
    with caplog.at_level(logging.WARNING, logger="rlhf_lens.decoding"):
        got = decoding.sample(model, tiny_tokenizer, prompts, [3] * len(prompts), max_new_tokens=8)
    assert got.completion_ids == models.sample(model, tiny_tokenizer, prompts, [3] * len(prompts), max_new_tokens=8).completion_ids
    assert "GPTJForCausalLM" in caplog.text and "models.sample" in caplog.text


def test_a_hooked_model_is_sampled_through_its_hooks(tiny_tokenizer):
    """A forward hook (a steering vector here) changes what the model computes: the HF forward runs it."""
    model = tiny_model("gpt2", tiny_tokenizer)
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS)
    plain = decoding.sample(model, tiny_tokenizer, prompts, [5] * len(prompts), max_new_tokens=10).completion_ids
    handle = model.transformer.h[1].register_forward_hook(lambda module, args, out: out + 3.0 * model.transformer.wte.weight[9])
    try:
        steered = decoding.sample(model, tiny_tokenizer, prompts, [5] * len(prompts), max_new_tokens=10).completion_ids
        assert steered == models.sample(model, tiny_tokenizer, prompts, [5] * len(prompts), max_new_tokens=10).completion_ids
    finally:
        handle.remove()
    assert steered != plain


@torch.no_grad()
def test_llama_biases_are_read(tiny_tokenizer):
    """Llama with attention and MLP biases (gate, up, down): logits at every step and samples."""
    import transformers

    from tests.tiny_models import tiny_config

    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(tiny_config("llama", tiny_tokenizer, attention_bias=True, mlp_bias=True)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.5)
    model = likely_to_end(model, tiny_tokenizer)
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS * 2)
    seeds = list(range(len(prompts)))
    expected = models.sample(model, tiny_tokenizer, prompts, seeds, max_new_tokens=16, with_logprobs=True)
    got = decoding.sample(model, tiny_tokenizer, prompts, seeds, max_new_tokens=16, with_logprobs=True)
    assert got.completion_ids == expected.completion_ids
    torch.testing.assert_close(got.logprobs, expected.logprobs, atol=1e-5, rtol=1e-5)


def test_length_dependent_rotary_scaling_falls_back(tiny_tokenizer):
    import transformers

    from tests.tiny_models import tiny_config

    config = tiny_config("llama", tiny_tokenizer, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(decoding.UnsupportedModel, match="dynamic"):
        read_weights(transformers.LlamaForCausalLM(config).eval())


def test_attention_dropout_set_in_the_config_is_refused_in_train_mode(tiny_tokenizer):
    """Llama applies its attention dropout from the config, with no Dropout module to see."""
    import transformers

    from tests.tiny_models import tiny_config

    model = transformers.LlamaForCausalLM(tiny_config("llama", tiny_tokenizer, attention_dropout=0.1)).train()
    with pytest.raises(decoding.UnsupportedModel, match=r"\.eval\(\)"):
        read_weights(model)
    read_weights(model.eval())  # eval mode: no dropout, the decoder runs it


def test_a_model_with_dropout_on_is_refused_with_the_fix(tiny_tokenizer):
    model = tiny_model("gpt2", tiny_tokenizer).train()
    model.config.resid_pdrop = 0.1
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    with pytest.raises(decoding.UnsupportedModel, match=r"\.eval\(\)"):
        read_weights(model)


@torch.no_grad()
def test_the_static_step_for_cuda_graphs_equals_the_dynamic_step(model, tiny_tokenizer, attention):
    """The graphed step's arithmetic (every slot under a mask, a tensor slot index), run eagerly on the CPU."""
    from rlhf_lens.decoding.graphs import StaticDecodeStep

    pad_id = tiny_tokenizer.pad_token_id
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS)
    weights = read_weights(model)
    dynamic, first = prefill(weights, prompts, pad_id, 8, torch.device("cpu"))
    static_state, _ = prefill(weights, prompts, pad_id, 8, torch.device("cpu"))
    static = StaticDecodeStep(weights, static_state.cache, static_state.key_valid, static_state.next_position, static_state.next_slot)
    tokens = first.argmax(-1)
    for _ in range(7):
        expected = decode_step(weights, dynamic, tokens)
        torch.testing.assert_close(static(tokens), expected, atol=1e-5, rtol=1e-5)
        tokens = expected.argmax(-1)
