"""Policy-optimisation math against values computed by hand: DPO, adaptive KL, best-of-n KL,
the per-token surrogate, global means, minibatches of whole prompts, sampling seeds."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lens.training.distributed import World, masked_moments
from rlhf_lens.training.losses import (
    adaptive_kl_coef,
    best_of_n_kl,
    clipped_surrogate,
    dpo_loss,
    entropy_from_logits,
    masked_mean,
    whiten,
)
from rlhf_lens.training.policy.rollout import sample_seed
from rlhf_lens.training.policy.update import epoch_seed, minibatch_rows


def test_dpo_loss_by_hand():
    # beta 0.5: chosen implicit reward 0.5*(−1 − (−2)) = 0.5, rejected 0.5*(−3 − (−2)) = −0.5
    loss, r_chosen, r_rejected = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert r_chosen.item() == pytest.approx(0.5) and r_rejected.item() == pytest.approx(-0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-4.0, -7.0])
    loss, _, _ = dpo_loss(logps, logps, logps, logps, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))


def test_adaptive_kl_controller_by_hand():
    # KL 9 vs target 6: error clipped to 0.2; beta *= 1 + 0.2 * 64 / 1000
    assert adaptive_kl_coef(0.1, 9.0, 64, 6.0, 1000) == pytest.approx(0.1 * (1 + 0.2 * 0.064))
    # KL 5.4 vs 6: error -0.1
    assert adaptive_kl_coef(0.1, 5.4, 100, 6.0, 1000) == pytest.approx(0.1 * (1 - 0.1 * 0.1))


def test_best_of_n_kl_analytic_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(64) == pytest.approx(math.log(64) - 63 / 64)


def test_clipped_surrogate_by_hand():
    # ratios e^0.5 ~ 1.65 (clipped to 1.2 for A > 0), e^-0.5 ~ 0.61 (for A < 0 the clip at 0.8 binds)
    logprobs = torch.tensor([[0.5, -0.5]])
    loss, clipped = clipped_surrogate(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), 0.2)
    assert loss[0, 0].item() == pytest.approx(-1.2)  # max(-1.65, -1.2)
    assert loss[0, 1].item() == pytest.approx(0.8)  # max(0.61, 0.8)
    assert clipped.tolist() == [[1.0, 1.0]]
    # sequence-level advantages broadcast over tokens
    loss, _ = clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[2.0], [-1.0]]), 0.2)
    assert loss.tolist() == [[-2.0] * 3, [1.0] * 3]


def test_masked_mean_with_a_global_count():
    x, mask = torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(1.5)
    assert masked_mean(x, mask, count=6.0).item() == pytest.approx(0.5)  # 3 / 6 tokens of all processes


def test_masked_moments_match_whiten_in_one_process():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    mean, var = masked_moments(x, mask, World())
    assert mean.item() == pytest.approx(3.0) and var.item() == pytest.approx(2.0)
    expected = whiten(x, mask)
    assert torch.allclose((x - mean) * torch.rsqrt(var + 1e-8) * mask, expected, atol=1e-6)


def test_entropy_of_uniform_logits_is_log_vocab():
    assert entropy_from_logits(torch.zeros(3, 50)).tolist() == pytest.approx([math.log(50)] * 3)


def global_minibatches(n_global: int, processes: int, minibatches: int, seed: int, group_size: int = 2) -> list[list[int]]:
    """The global prompts of each minibatch, in visiting order, when n_global prompts are split over processes."""
    per = n_global // processes
    local = [minibatch_rows(per, group_size, minibatches, seed=seed, rank=rank) for rank in range(processes)]
    for rows in local:  # whole groups, every process holds an equal share of every minibatch
        assert all(len(mb) == per // minibatches * group_size for mb in rows)
        assert all(
            sorted(mb) == sorted({p * group_size + j for p in {r // group_size for r in mb} for j in range(group_size)}) for mb in rows
        )
    return [sorted({rank * per + r // group_size for rank in range(processes) for r in local[rank][m]}) for m in range(minibatches)]


def test_minibatches_keep_groups_and_are_the_same_split_over_processes():
    for seed in range(5):
        one = global_minibatches(8, 1, 2, seed)
        assert sorted(p for mb in one for p in mb) == list(range(8))  # each prompt once per epoch
        assert global_minibatches(8, 2, 2, seed) == one == global_minibatches(8, 4, 2, seed)
    with pytest.raises(ValueError, match="multiple of minibatches"):
        minibatch_rows(n_prompts=3, group_size=2, minibatches=2, seed=0)


def test_minibatches_are_drawn_afresh_each_epoch_and_stable_for_resume():
    seeds = [epoch_seed(0, step=3, epoch=e) for e in range(4)]
    assert len(set(seeds)) == 4 and seeds[0] == epoch_seed(0, step=3, epoch=0)
    assert epoch_seed(1, 3, 0) != seeds[0] and epoch_seed(0, 4, 0) != seeds[0]
    splits = {tuple(map(tuple, global_minibatches(16, 1, 4, s))) for s in seeds}
    assert len(splits) > 1  # the split changes between epochs (CleanRL/TRL permute every epoch)


def test_sample_seeds_differ_by_every_coordinate_and_are_stable():
    base = sample_seed(0, 5, 10, 1)
    assert base == sample_seed(0, 5, 10, 1)
    others = {
        sample_seed(1, 5, 10, 1),
        sample_seed(0, 6, 10, 1),
        sample_seed(0, 5, 11, 1),
        sample_seed(0, 5, 10, 2),
        sample_seed(0, -1, 10, 1),
    }
    assert base not in others and len(others) == 5


def test_world_shard_refuses_uneven_batches():
    assert World(rank=1, size=2).shard([0, 1, 2, 3]) == [2, 3]
    with pytest.raises(ValueError, match="multiple of the process count"):
        World(rank=0, size=2).shard([0, 1, 2])


def test_dpo_heldout_texts_are_scored_once_each(tiny_gpt2):
    from rlhf_lens.training.policy.dpo import Pairs, distinct_texts, pair_logps, text_logps

    # The same pair judged twice (two labelers), and a third pair sharing a completion with it.
    pairs = Pairs(records=[{}] * 3, prompt_ids=[[1, 5], [1, 5], [1, 5]], chosen_ids=[[7, 8], [7, 8], [9]], rejected_ids=[[9], [9], [7, 8]])
    texts, chosen, rejected = distinct_texts(pairs)
    assert texts == [((1, 5), (7, 8)), ((1, 5), (9,))]
    assert chosen.tolist() == [0, 0, 1] and rejected.tolist() == [1, 1, 0]
    logps = text_logps(tiny_gpt2, texts, pad_id=0, batch_size=1)
    with torch.no_grad():
        direct_chosen, direct_rejected = pair_logps(tiny_gpt2, pairs, [0, 1, 2], pad_id=0)
    assert logps[chosen].tolist() == pytest.approx(direct_chosen.tolist(), abs=1e-5)
    assert logps[rejected].tolist() == pytest.approx(direct_rejected.tolist(), abs=1e-5)


class FakeRollout:
    """Two completions (2 tokens and 1 token) with hand-picked logprobs."""

    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, 0.0, 0.0]])
    completion_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    seq_kl = ((logprobs - ref_logprobs) * completion_mask).sum(-1)  # k1: -0.5 and 0
    entropy = torch.zeros(2, 3)
    scores = rewards = torch.tensor([1.0, 0.0])
    lengths = torch.tensor([2.0, 1.0])
    finished = torch.tensor([True, True])
    gold = None

    def __len__(self):
        return 2


def test_grpo_logs_the_k3_its_loss_uses_under_kl_and_the_k1_sequence_kl_beside_it():
    from rlhf_lens.training.distributed import World
    from rlhf_lens.training.policy.online import step_metrics

    metrics = step_metrics(FakeRollout(), "grpo", kl_coef=0.1, world=World())
    # k3 = e^(ref - lp) - 1 - (ref - lp): tokens of sequence 0 give e^-0.5 - 0.5 and e - 2; sequence 1 gives 0
    k3_first = ((math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0)) / 2
    assert metrics["kl"] == pytest.approx(k3_first / 2)
    assert metrics["objective/kl"] == pytest.approx(-0.25)
    assert step_metrics(FakeRollout(), "rloo", kl_coef=0.1, world=World())["objective/kl"] == pytest.approx(-0.25)
