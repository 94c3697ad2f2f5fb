"""Packed policy passes (each prompt once before its completions) give the padded path's losses and gradients, for
every algorithm's update: GRPO and RLOO (`group_update`), PPO (`ppo_update`, policy and value model) and DPO
(`pair_loss`)."""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch

from rlhf_lens.models import TokenValues, completion_logits, completion_values
from rlhf_lens.training.config import PolicyStageConfig
from rlhf_lens.training.distributed import World
from rlhf_lens.training.policy import ppo as ppo_module
from rlhf_lens.training.policy import rollout as rollout_module
from rlhf_lens.training.policy.dpo import Pairs, pair_loss
from rlhf_lens.training.policy.group import group_update
from rlhf_lens.training.policy.ppo import ppo_update
from rlhf_lens.training.policy.reward_source import RewardSource
from rlhf_lens.training.policy.rollout import collect_rollout

PROMPTS = ["The screen is", "The battery", "We ate here and the food", "My new phone"]


def padded(monkeypatch) -> None:
    """Route every policy pass through the padded path."""
    monkeypatch.setattr(rollout_module, "packed_completion_logits", completion_logits)
    monkeypatch.setattr(ppo_module, "packed_completion_values", completion_values)


def rollout_of(policy, tokenizer, group_size: int):
    prompts = [{"index": i, "id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    reward = RewardSource("length", lambda ps, cs: [len(c) / 10.0 for c in cs])
    return collect_rollout(
        policy, copy.deepcopy(policy), tokenizer, reward, None, prompts, group_size=group_size, seed=0, step=1,
        max_new_tokens=10, temperature=1.0, reward_scale=1.0, eos_penalty=0.5,
    )  # fmt: skip


def one_update(update, models, rollout, cfg, pad_id):
    """Run `update` with SGD at lr 1 on copies of `models`: -> (metrics, the weight changes, i.e. minus the gradients)."""
    copies = [copy.deepcopy(m) for m in models]
    optimizer = torch.optim.SGD([p for m in copies for p in m.parameters()], lr=1.0)
    metrics, applied = update(*copies, optimizer, rollout, cfg, kl_coef=0.05, pad_id=pad_id, world=World(), seed=0, step=1)
    assert applied
    deltas = [(b - a).detach() for m, c in zip(models, copies) for a, b in zip(m.parameters(), c.parameters())]
    return metrics, deltas


def assert_same(packed_result, padded_result):
    (metrics_a, deltas_a), (metrics_b, deltas_b) = packed_result, padded_result
    assert metrics_a.keys() == metrics_b.keys()
    for key in metrics_a:
        assert metrics_a[key] == pytest.approx(metrics_b[key], abs=1e-5), key
    assert max(float((a - b).abs().max()) for a, b in zip(deltas_a, deltas_b)) < 1e-5


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_group_updates_packed_equal_padded(algorithm, tiny_gpt2, tiny_tokenizer, monkeypatch):
    cfg = PolicyStageConfig(algorithm=algorithm, group_size=4, batch_size=4, epochs=2, minibatches=2, grad_clip=1e6)
    rollout = rollout_of(tiny_gpt2, tiny_tokenizer, 4)
    packed = one_update(lambda *a, **k: group_update(*a, **k), [tiny_gpt2], rollout, cfg, tiny_tokenizer.pad_token_id)
    padded(monkeypatch)
    assert_same(packed, one_update(lambda *a, **k: group_update(*a, **k), [tiny_gpt2], rollout, cfg, tiny_tokenizer.pad_token_id))


def test_ppo_update_packed_equals_padded(tiny_gpt2, tiny_scorer, tiny_tokenizer, monkeypatch):
    cfg = PolicyStageConfig(algorithm="ppo", group_size=1, batch_size=4, epochs=2, minibatches=2, grad_clip=1e6)
    rollout = rollout_of(tiny_gpt2, tiny_tokenizer, 1)
    value_model = TokenValues(copy.deepcopy(tiny_scorer))
    packed = one_update(ppo_update, [tiny_gpt2, value_model], rollout, cfg, tiny_tokenizer.pad_token_id)
    padded(monkeypatch)
    assert_same(packed, one_update(ppo_update, [tiny_gpt2, value_model], rollout, cfg, tiny_tokenizer.pad_token_id))


def test_dpo_loss_packed_equals_padded(tiny_gpt2, tiny_tokenizer, monkeypatch):
    records = [{"prompt": p, "chosen": " great and fine.", "rejected": " bad" + " bad" * i} for i, p in enumerate(PROMPTS)]
    pairs = Pairs.of(records, tiny_tokenizer, 64)
    model = copy.deepcopy(tiny_gpt2)
    setup = SimpleNamespace(tokenizer=tiny_tokenizer, reference=copy.deepcopy(tiny_gpt2), autocast=contextlib.nullcontext)

    def loss_and_grads():
        model.zero_grad()
        loss, stats = pair_loss(model, setup, pairs, list(range(len(records))), 0.1)
        loss.backward()
        return {"loss": float(loss), **{k: float(v.sum()) for k, v in stats.items()}}, [p.grad.clone() for p in model.parameters()]

    packed = loss_and_grads()
    padded(monkeypatch)
    assert_same(packed, loss_and_grads())


def test_packed_passes_take_models_wrapped_for_distributed_training(tiny_gpt2, tiny_scorer, tiny_tokenizer):
    """torchrun wraps the policy and the value model in DistributedDataParallel: the packed passes look through it."""
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from rlhf_lens.packing import packed_completion_logits, packed_completion_values

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        prompt_ids, completion_ids = [[0, 5, 6], [0, 5, 6], [0, 7]], [[8, 9], [10], [11, 12, 13]]
        policy, values = copy.deepcopy(tiny_gpt2), TokenValues(copy.deepcopy(tiny_scorer))
        with torch.no_grad():
            expected = packed_completion_logits(policy, prompt_ids, completion_ids, 0)[0]
            got = packed_completion_logits(DistributedDataParallel(policy), prompt_ids, completion_ids, 0)[0]
            torch.testing.assert_close(got, expected)
            expected_values = packed_completion_values(values, prompt_ids, completion_ids, 0)
            got_values = packed_completion_values(DistributedDataParallel(values), prompt_ids, completion_ids, 0)
            torch.testing.assert_close(got_values, expected_values)
    finally:
        dist.destroy_process_group()
