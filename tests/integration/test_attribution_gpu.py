"""Attribution on CUDA gives the CPU's answer (runs where a GPU is present; skipped elsewhere)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from rlhf_lens.analyses.attribution import alignment_attribution, reward_integrated_gradients, reward_shapley_sampling
from tests.unit.analyses.test_attribution_reward import gpt2_reward, texts

pytestmark = pytest.mark.gpu


def test_reward_attributions_on_cuda_equal_the_cpu_ones(tiny_tokenizer):
    model = gpt2_reward(tiny_tokenizer)
    prompts, completions = texts(16)
    on_cpu = reward_integrated_gradients(model, tiny_tokenizer, prompts, completions, n_steps=32)
    on_gpu = reward_integrated_gradients(copy.deepcopy(model).cuda(), tiny_tokenizer, prompts, completions, n_steps=32)
    np.testing.assert_allclose(on_gpu.df["attribution"], on_cpu.df["attribution"], atol=1e-3)
    np.testing.assert_allclose(on_gpu.texts["reward"], on_cpu.texts["reward"], atol=1e-4)
    shapley = reward_shapley_sampling(copy.deepcopy(model).cuda(), tiny_tokenizer, prompts[:2], completions[:2], n_samples=2)
    np.testing.assert_allclose(shapley.texts["delta"], 0.0, atol=1e-4)


def test_alignment_attribution_on_cuda_equals_the_cpu_one(tiny_tokenizer, tiny_gpt2):
    import torch

    policy = copy.deepcopy(tiny_gpt2)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.05 * torch.randn_like(policy.lm_head.weight))
    prompts, completions = texts(8)
    on_cpu = alignment_attribution(policy, tiny_gpt2, tiny_tokenizer, prompts, completions, n_steps=16)
    on_gpu = alignment_attribution(
        copy.deepcopy(policy).cuda(), copy.deepcopy(tiny_gpt2).cuda(), tiny_tokenizer, prompts, completions, n_steps=16
    )
    np.testing.assert_allclose(on_gpu.df["attribution"], on_cpu.df["attribution"], atol=1e-3)
