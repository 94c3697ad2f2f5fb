"""The shared model math against direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lens.models import (
    ModelLoadError,
    check_vocab_fits,
    completion_logprobs,
    encode_prompts,
    exact_kl_per_token,
    kl_per_token,
    pad_left,
    pad_right,
    sample,
    sequence_logprobs,
)


def direct_logprobs(model, prompt: list[int], completion: list[int]) -> list[float]:
    """log p(completion token | prefix), one unpadded sequence at a time."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
    return [logp[len(prompt) + j - 1, tok].item() for j, tok in enumerate(completion)]


def test_padding_shapes_and_masks():
    ids, mask = pad_left([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = pad_right([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[1, 1], [1, 0]]


def test_completion_logprobs_match_direct_computation(tiny_gpt2, tiny_tokenizer):
    prompts = encode_prompts(tiny_tokenizer, ["The hotel room was", "My new phone"])
    completions = [[10, 11, 12, 13], [20, 21]]
    logprobs, mask = completion_logprobs(tiny_gpt2, prompts, completions, tiny_tokenizer.pad_token_id)
    assert logprobs.shape == (2, 4) and mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    for row, (p, c) in enumerate(zip(prompts, completions)):
        expected = direct_logprobs(tiny_gpt2, p, c)
        assert logprobs[row, : len(c)].tolist() == pytest.approx(expected, abs=1e-4)
        assert logprobs[row, len(c) :].abs().sum().item() == 0.0
    seq = sequence_logprobs(logprobs, mask)
    assert seq[1].item() == pytest.approx(sum(direct_logprobs(tiny_gpt2, prompts[1], completions[1])), abs=1e-4)


def test_sampling_is_seeded_per_sample_not_per_batch(tiny_gpt2, tiny_tokenizer):
    prompts = encode_prompts(tiny_tokenizer, ["The hotel room was", "My new phone", "I watched this movie"])
    together = sample(tiny_gpt2, tiny_tokenizer, prompts, [1, 2, 3], max_new_tokens=12)
    again = sample(tiny_gpt2, tiny_tokenizer, prompts, [1, 2, 3], max_new_tokens=12)
    assert together.completion_ids == again.completion_ids
    reordered = sample(tiny_gpt2, tiny_tokenizer, prompts[::-1], [3, 2, 1], max_new_tokens=12)
    assert reordered.completion_ids[::-1] == together.completion_ids
    alone = sample(tiny_gpt2, tiny_tokenizer, prompts[1:2], [2], max_new_tokens=12)
    assert alone.completion_ids[0] == together.completion_ids[1]
    other_seed = sample(tiny_gpt2, tiny_tokenizer, prompts, [11, 12, 13], max_new_tokens=12)
    assert other_seed.completion_ids != together.completion_ids


def test_sampling_follows_the_model_distribution(tiny_gpt2, tiny_tokenizer):
    """The empirical first-token distribution over many seeds matches softmax(logits)."""
    prompt = encode_prompts(tiny_tokenizer, ["The food"])[0]
    n = 2000
    samples = sample(tiny_gpt2, tiny_tokenizer, [prompt] * n, list(range(n)), max_new_tokens=1)
    with torch.no_grad():
        probs = torch.softmax(tiny_gpt2(input_ids=torch.tensor([prompt])).logits[0, -1], -1)
    top = probs.argmax().item()
    freq = sum(c[0] == top for c in samples.completion_ids) / n
    stderr = math.sqrt(probs[top].item() * (1 - probs[top].item()) / n)
    assert abs(freq - probs[top].item()) < 4 * stderr + 1e-3


def test_sampled_logprobs_are_consistent_with_scoring(tiny_gpt2, tiny_tokenizer):
    """Greedy sampling picks the argmax token at every step, by the scorer's own logprobs."""
    prompts = encode_prompts(tiny_tokenizer, ["The hotel room was", "My new phone"])
    greedy = sample(tiny_gpt2, tiny_tokenizer, prompts, [0, 0], max_new_tokens=6, temperature=0.0)
    for row, completion in enumerate(greedy.completion_ids):
        prefix = greedy.prompt_ids[row]
        for j, token in enumerate(completion):
            with torch.no_grad():
                logits = tiny_gpt2(input_ids=torch.tensor([prefix + completion[:j]])).logits[0, -1]
            assert logits.argmax().item() == token


def test_kl_estimators_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    assert kl_per_token(logprobs, ref).tolist() == [[0.5, -1.0, 0.0]]
    p = torch.tensor([0.5, 0.5]).log()
    q = torch.tensor([0.25, 0.75]).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert exact_kl_per_token(p, q).item() == pytest.approx(expected, abs=1e-6)
    assert exact_kl_per_token(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_tokenizer_larger_than_embedding_table_is_refused(tiny_gpt2, tiny_tokenizer):
    tiny_tokenizer_copy = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    tiny_tokenizer_copy.add_tokens([f"extra{i}" for i in range(tiny_gpt2.get_input_embeddings().weight.shape[0])])
    with pytest.raises(ModelLoadError, match=r"embedding table has only \d+ rows"):
        check_vocab_fits(tiny_gpt2, tiny_tokenizer_copy, where="test-model")
    check_vocab_fits(tiny_gpt2, tiny_tokenizer)  # the matching tokenizer passes


def test_reward_scores_do_not_depend_on_padding(tiny_scorer, tiny_tokenizer):
    from rlhf_lens.models import reward_input_ids, score_rewards

    ids = reward_input_ids(tiny_tokenizer, ["The hotel was", "My phone"], [" very clean and the staff were kind.", ""], context=64)
    with torch.no_grad():
        together = score_rewards(tiny_scorer, ids, tiny_tokenizer.pad_token_id)
        alone = [score_rewards(tiny_scorer, [seq], tiny_tokenizer.pad_token_id).item() for seq in ids]
    assert together.tolist() == pytest.approx(alone, abs=1e-5)
    assert torch.isfinite(together).all()  # the empty completion scores too (its prompt's last token)
    tiny_scorer.config.reward_offset = 0.25
    with torch.no_grad():
        shifted = score_rewards(tiny_scorer, ids, tiny_tokenizer.pad_token_id)
    del tiny_scorer.config.reward_offset
    assert (together - shifted).tolist() == pytest.approx([0.25, 0.25], abs=1e-6)


def test_reward_inputs_longer_than_context_lose_the_prompt_first(tiny_tokenizer):
    from rlhf_lens.models import reward_input_ids

    completion = " the staff were kind."
    with pytest.warns(UserWarning, match="truncated from the left"):
        (ids,) = reward_input_ids(tiny_tokenizer, ["the room was nice. " * 30], [completion], context=32)
    assert len(ids) == 32
    assert tiny_tokenizer.decode(ids).endswith(completion)


def test_generative_reward_is_the_verdict_log_odds(tiny_gpt2, tiny_tokenizer):
    from rlhf_lens.models import VERDICTS, generative_rewards, verdict_prefix

    reward = generative_rewards(tiny_gpt2, tiny_tokenizer, ["The food"], [" was great."], ["It says great."]).item()
    prefix = encode_prompts(tiny_tokenizer, [verdict_prefix("The food", " was great.", "It says great.")])[0]
    good, bad = (tiny_tokenizer(v, add_special_tokens=False)["input_ids"] for v in VERDICTS)
    expected = sum(direct_logprobs(tiny_gpt2, prefix, good)) - sum(direct_logprobs(tiny_gpt2, prefix, bad))
    assert reward == pytest.approx(expected, abs=1e-4)


def test_loaded_and_built_models_run_one_kernel_activations_with_the_same_outputs(tiny_tokenizer, tmp_path):
    from rlhf_lens.models import fuse_activations, load_causal_lm
    from tests.tiny_models import tiny_model

    model = tiny_model("gpt2", tiny_tokenizer)
    assert type(model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    ids = torch.tensor([encode_prompts(tiny_tokenizer, ["The pasta was great and the service slow"])[0]])
    expected = model(ids).logits
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_causal_lm(tmp_path)
    assert type(loaded.transformer.h[0].mlp.act).__name__ == "GELUTanh"
    assert loaded.config.activation_function == "gelu_new"  # what a save writes is unchanged
    torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fuse_activations(model)(ids).logits, expected, atol=1e-5, rtol=1e-5)
