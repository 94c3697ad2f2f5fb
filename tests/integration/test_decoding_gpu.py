"""The lean decoder on CUDA: CUDA-graph replay and bf16 (runs where a GPU is present; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

from rlhf_lens import decoding, models
from tests.tiny_models import ARCHITECTURES, tiny_model
from tests.unit.decoding.test_lean_decoder import PROMPTS, likely_to_end

pytestmark = pytest.mark.gpu


def _pair(arch: str, tokenizer):
    cpu = likely_to_end(tiny_model(arch, tokenizer), tokenizer)
    cuda = tiny_model(arch, tokenizer)
    cuda.load_state_dict(cpu.state_dict())
    return cpu, cuda.to("cuda")


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("cuda_graphs", [True, False])
@pytest.mark.parametrize("max_new_tokens", [1, 2, 24])
def test_float32_samples_on_cuda_equal_models_sample_on_the_cpu(arch, cuda_graphs, max_new_tokens, tiny_tokenizer):
    cpu, cuda = _pair(arch, tiny_tokenizer)
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS * 4)
    seeds = list(range(len(prompts)))
    expected = models.sample(cpu, tiny_tokenizer, prompts, seeds, max_new_tokens=max_new_tokens, with_logprobs=True)
    got = decoding.sample(cuda, tiny_tokenizer, prompts, seeds, max_new_tokens=max_new_tokens, with_logprobs=True, cuda_graphs=cuda_graphs)
    assert got.completion_ids == expected.completion_ids
    torch.testing.assert_close(got.logprobs.cpu(), expected.logprobs, atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_graph_replay_equals_the_eager_static_step_in_bf16(arch, tiny_tokenizer):
    from rlhf_lens.decoding.graphs import StaticDecodeStep
    from rlhf_lens.decoding.sampler import prefill
    from rlhf_lens.decoding.weights import cast_weights, read_weights

    _, cuda = _pair(arch, tiny_tokenizer)
    weights = cast_weights(read_weights(cuda), torch.bfloat16)
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS * 4)
    steps = []
    for capture in (True, False):
        state, logits = prefill(weights, prompts, tiny_tokenizer.pad_token_id, 16, torch.device("cuda"))
        step = StaticDecodeStep(weights, state.cache, state.key_valid, state.next_position, state.next_slot, capture=capture)
        assert (step.graph is not None) == capture
        tokens, out = logits.argmax(-1), []
        for _ in range(12):
            logits = step(tokens).clone()
            out.append(logits)
            tokens = logits.argmax(-1)
        steps.append(torch.stack(out))
    torch.testing.assert_close(steps[0], steps[1], atol=0, rtol=0)


@torch.no_grad()
def test_bf16_autocast_sampling_runs_graphed_and_ends_rows(tiny_tokenizer):
    _, cuda = _pair("llama", tiny_tokenizer)
    prompts = models.encode_prompts(tiny_tokenizer, PROMPTS * 4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        drawn = decoding.sample(cuda, tiny_tokenizer, prompts, list(range(len(prompts))), max_new_tokens=24)
    assert 0 < sum(drawn.finished) < len(prompts)
    assert all(len(c) <= 24 and all(0 <= t < len(tiny_tokenizer) for t in c) for c in drawn.completion_ids)
