"""Rollouts of an online policy stage: sample, score, and everything the reward log keeps.

A rollout holds one step's samples of this process: `group_size` completions for
each of its prompts, their per-token logprobs under the policy and the frozen
reference, the proxy reward and its parts, and the oracle's gold reward. Per-token
tensors are right-padded to `gen_len = max_new_tokens`, so rollouts of different
processes have one shape and can be gathered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rlhf_lens.decoding import sample
from rlhf_lens.models import completion_logits, encode_prompts
from rlhf_lens.packing import packed_completion_logits
from rlhf_lens.training.losses import entropy_from_logits
from rlhf_lens.training.policy.reward_source import RewardError, RewardSource


def sample_seed(seed: int, step: int, prompt_index: int, j: int) -> int:
    """The sampling seed of completion j of a prompt at a step: independent of batch layout and process count."""
    return int(np.random.SeedSequence([seed, step + 10, prompt_index, j]).generate_state(1)[0])  # SeedSequence needs >= 0


@dataclass
class Rollout:
    prompt_id: list[str]
    """(batch,) id of each sample's prompt (data/prompts.jsonl)."""
    prompt_index: list[int]
    """(batch,) line of that prompt in data/prompts.jsonl."""
    sample_index: list[int]
    """(batch,) j of the sample within its prompt's group."""
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    """Token ids; a finished completion ends with EOS."""
    prompts: list[str]
    completions: list[str]
    finished: torch.Tensor
    """(batch,) bool: the completion reached EOS."""
    logprobs: torch.Tensor
    """(batch, gen_len) log pi(token) at sampling time."""
    ref_logprobs: torch.Tensor
    """(batch, gen_len) log pi_ref(token)."""
    entropy: torch.Tensor
    """(batch, gen_len) policy entropy at each completion position."""
    completion_mask: torch.Tensor
    """(batch, gen_len) 1.0 on completion tokens."""
    scores: torch.Tensor
    """(batch,) proxy reward-model score (normalised)."""
    eos_penalty: torch.Tensor
    """(batch,) subtracted from the score when the completion never reached EOS."""
    gold: torch.Tensor | None
    """(batch,) the oracle's reward, when the task has one."""

    @property
    def rewards(self) -> torch.Tensor:
        """(batch,) proxy reward: score - missing-EOS penalty."""
        return self.scores - self.eos_penalty

    @property
    def kl_per_token(self) -> torch.Tensor:
        """(batch, gen_len) k1 estimate log pi - log pi_ref at the sampled tokens."""
        return (self.logprobs - self.ref_logprobs) * self.completion_mask

    @property
    def seq_kl(self) -> torch.Tensor:
        return self.kl_per_token.sum(-1)

    @property
    def lengths(self) -> torch.Tensor:
        """(batch,) completion tokens, EOS included."""
        return self.completion_mask.sum(-1)

    def __len__(self) -> int:
        return len(self.prompt_ids)


def token_logprobs(
    model, prompt_ids, completion_ids, pad_id: int, gen_len: int, with_entropy: bool = False, temperature: float = 1.0, packed: bool = True
):
    """Per-token logprobs (and entropies) of completions under the policy sampled at `temperature`,
    right-padded to gen_len: -> (batch, gen_len) [, (batch, gen_len)]. `packed`: one pass with each prompt written once
    before its completions (`packing.packed_completion_logits`), else one padded row per text."""
    logits_of = packed_completion_logits if packed and all(len(c) for c in completion_ids) else completion_logits
    logits, targets, mask = logits_of(model, prompt_ids, completion_ids, pad_id)  # (batch, L, vocab)
    logits = logits.float() / temperature
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, :, None]).squeeze(-1) * mask
    pad = gen_len - logprobs.shape[1]
    logprobs = F.pad(logprobs, (0, pad))
    if not with_entropy:
        return logprobs
    return logprobs, F.pad(entropy_from_logits(logits) * mask, (0, pad))


def oracle_rewards(gold_fn, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """The task oracle's rewards as float32 (n,); a failure is a RewardError naming the oracle."""
    try:
        return np.asarray(gold_fn(list(prompts), list(completions)), dtype=np.float32).reshape(-1)
    except Exception as exc:  # noqa: BLE001
        raise RewardError(f"the task's gold reward (oracle) raised {type(exc).__name__}: {exc}") from exc


def minibatch_logprobs(policy, rollout: Rollout, rows: list[int], pad_id: int, *, temperature: float) -> torch.Tensor:
    """Per-token logprobs of some rollout samples under `policy` (differentiable): -> (len(rows), gen_len)."""
    prompt_ids, completion_ids = [rollout.prompt_ids[i] for i in rows], [rollout.completion_ids[i] for i in rows]
    return token_logprobs(policy, prompt_ids, completion_ids, pad_id, rollout.completion_mask.shape[1], temperature=temperature)


def padded_mask(completion_ids: Sequence[Sequence[int]], gen_len: int, device) -> torch.Tensor:
    lengths = torch.tensor([len(c) for c in completion_ids], device=device)
    return (torch.arange(gen_len, device=device)[None, :] < lengths[:, None]).float()  # (batch, gen_len)


def group_seeds(prompts: Sequence[dict], group_size: int, seed: int, step: int) -> tuple[list[dict], list[int]]:
    """Each prompt repeated `group_size` times, and the sampling seed of each of those samples."""
    flat = [p for p in prompts for _ in range(group_size)]
    return flat, [sample_seed(seed, step, p["index"], j) for p in prompts for j in range(group_size)]


def _draw(policy, tokenizer, texts: list[str], seeds: list[int], *, max_new_tokens: int, temperature: float, keep_logprobs: bool):
    """The policy's samples of `texts`; an empty completion becomes the EOS token, scored and logged like any other."""
    drawn = sample(
        policy,
        tokenizer,
        encode_prompts(tokenizer, texts),
        seeds,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        with_logprobs=keep_logprobs,
    )
    return dataclasses.replace(drawn, completion_ids=[c if c else [tokenizer.eos_token_id] for c in drawn.completion_ids])


def _policy_logprobs(policy, samples, completion_ids, pad_id: int, gen_len: int, temperature: float):
    """The policy's log-probabilities and entropies of its samples: the sampler's own when it kept them (no second
    pass), else a full forward pass -> (batch, gen_len) each."""
    if samples.logprobs is not None:
        return samples.logprobs, samples.entropy
    return token_logprobs(policy, samples.prompt_ids, completion_ids, pad_id, gen_len, with_entropy=True, temperature=temperature)


def _autocast_enabled(device: torch.device) -> bool:
    """Whether mixed-precision autocast is on: the sampler's log-probabilities then differ from a full pass's by more
    than float rounding, so they are not reused."""
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4 takes no device type and answers for CUDA
        return device.type == "cuda" and torch.is_autocast_enabled()


@torch.no_grad()
def collect_rollout(
    policy,
    reference,
    tokenizer,
    reward: RewardSource | None,
    gold_fn,
    prompts: Sequence[dict],
    *,
    group_size: int,
    seed: int,
    step: int,
    max_new_tokens: int,
    temperature: float,
    reward_scale: float,
    eos_penalty: float,
    sampler_logprobs: bool = True,
) -> Rollout:
    """Sample `group_size` completions per prompt ({"index", "id", "prompt"}), score them and compute logprobs: the
    sampler's own with `sampler_logprobs` (no second pass), else a full pass, so KL to an identical reference is 0."""
    device = next(policy.parameters()).device
    flat, seeds = group_seeds(prompts, group_size, seed, step)
    texts = [p["prompt"] for p in flat]
    keep = sampler_logprobs and not _autocast_enabled(device)
    samples = _draw(policy, tokenizer, texts, seeds, max_new_tokens=max_new_tokens, temperature=temperature, keep_logprobs=keep)
    completion_ids = samples.completion_ids
    pad_id = tokenizer.pad_token_id
    logprobs, entropy = _policy_logprobs(policy, samples, completion_ids, pad_id, max_new_tokens, temperature)
    ref_logprobs = token_logprobs(reference, samples.prompt_ids, completion_ids, pad_id, max_new_tokens, temperature=temperature)
    raw = reward.score(texts, samples.texts) if reward is not None else np.zeros(len(texts))  # DPO has no reward
    scores = torch.tensor(raw, dtype=torch.float32, device=device) * reward_scale
    finished = torch.tensor(samples.finished, device=device)
    gold = torch.tensor(oracle_rewards(gold_fn, texts, samples.texts), device=device) if gold_fn else None
    return Rollout(
        prompt_id=[p["id"] for p in flat],
        prompt_index=[p["index"] for p in flat],
        sample_index=[j for _ in prompts for j in range(group_size)],
        prompt_ids=samples.prompt_ids,
        completion_ids=completion_ids,
        prompts=texts,
        completions=samples.texts,
        finished=finished,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        entropy=entropy,
        completion_mask=padded_mask(completion_ids, max_new_tokens, device),
        scores=scores,
        eos_penalty=(~finished).float() * eos_penalty,
        gold=gold,
    )


def rollout_rows(rollout: Rollout, *, stage: str, step: int, first_sample_id: int = 0) -> list[dict]:
    """The rollout as reward-log rows with the DESIGN.md columns (per-token columns are lists)."""
    lengths = rollout.lengths.long().tolist()
    logprobs, ref_logprobs, kl = rollout.logprobs.tolist(), rollout.ref_logprobs.tolist(), rollout.kl_per_token.tolist()
    seq_kl, rewards, scores, penalty = (
        rollout.seq_kl.tolist(),
        rollout.rewards.tolist(),
        rollout.scores.tolist(),
        rollout.eos_penalty.tolist(),
    )
    gold = rollout.gold.tolist() if rollout.gold is not None else [None] * len(rollout)
    finished = rollout.finished.tolist()
    return [
        {
            "stage": stage,
            "step": step,
            "sample_id": first_sample_id + i,
            "prompt_id": rollout.prompt_id[i],
            "prompt": rollout.prompts[i],
            "completion": rollout.completions[i],
            "prompt_ids": list(rollout.prompt_ids[i]),
            "completion_ids": list(rollout.completion_ids[i]),
            "logprobs": logprobs[i][: lengths[i]],
            "ref_logprobs": ref_logprobs[i][: lengths[i]],
            "kl_per_token": kl[i][: lengths[i]],
            "seq_kl": seq_kl[i],
            "reward": rewards[i],
            "reward_components": {"score": scores[i], "missing_eos_penalty": -penalty[i]},
            "gold_reward": gold[i],
            "length": lengths[i],
            "finished": bool(finished[i]),
        }
        for i in range(len(rollout))
    ]


def gather_rollout(rollout: Rollout, world, tokenizer, prompts_by_index: dict[int, dict], context: int) -> Rollout:
    """Every process's rollout concatenated in rank order (for the reward log written by rank 0).

    Only tensors travel between processes: token ids are padded with -1 and texts
    are rebuilt from the prompt ids and by decoding.
    """
    if not world.distributed:
        return rollout
    device = rollout.logprobs.device

    def ids_tensor(seqs, width):
        out = torch.full((len(seqs), width), -1, dtype=torch.long, device=device)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out

    def ids_lists(t):
        return [[x for x in row if x >= 0] for row in t.tolist()]

    gen_len = rollout.logprobs.shape[1]
    completion_ids = ids_lists(world.gather(ids_tensor(rollout.completion_ids, gen_len)))
    prompt_ids = ids_lists(world.gather(ids_tensor(rollout.prompt_ids, context)))
    prompt_index = world.gather(torch.tensor(rollout.prompt_index, device=device)).tolist()
    sample_index = world.gather(torch.tensor(rollout.sample_index, device=device)).tolist()
    gold = world.gather(rollout.gold) if rollout.gold is not None else None
    return Rollout(
        prompt_id=[prompts_by_index[i]["id"] for i in prompt_index],
        prompt_index=prompt_index,
        sample_index=sample_index,
        prompt_ids=prompt_ids,
        completion_ids=completion_ids,
        prompts=[prompts_by_index[i]["prompt"] for i in prompt_index],
        completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        finished=world.gather(rollout.finished.to(torch.uint8)).bool(),
        logprobs=world.gather(rollout.logprobs),
        ref_logprobs=world.gather(rollout.ref_logprobs),
        entropy=world.gather(rollout.entropy),
        completion_mask=world.gather(rollout.completion_mask),
        scores=world.gather(rollout.scores),
        eos_penalty=world.gather(rollout.eos_penalty),
        gold=gold,
    )
