"""Reward-model objectives and evaluation for the three kinds of reward model.

- scoring: regression of a scalar head on 1-5 ratings (normalised to [-1, 1]);
- ranking: Bradley-Terry on comparisons, Plackett-Luce on K-wise rankings;
- generative: a causal LM fine-tuned to write a critique then a verdict; its
  reward is log p(good) - log p(bad) at the verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rlhf_lens.models import (
    CRITIQUE_MARK,
    VERDICT_MARK,
    context_length,
    encode_prompts,
    generative_rewards,
    judge_texts,
    reward_input_parts,
    score_texts,
    write_critiques,
)
from rlhf_lens.packing import pack_texts, packed_rewards
from rlhf_lens.tasks.agreement import (
    calibration,
    disputed_records,
    gold_accuracy,
    labeler_agreement,
    labeler_profiles,
    linear_correlation,
    pairwise_accuracy,
    rank_correlation,
    sigmoid,
)
from rlhf_lens.training.data import PromptCompletions
from rlhf_lens.training.lm import completion_nll
from rlhf_lens.training.loop import Objective
from rlhf_lens.training.losses import bradley_terry_loss, plackett_luce_loss, rating_regression_loss
from rlhf_lens.training.reward.feedback import Feedback

RewardFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""reward_fn(prompts, completions) -> (n,) rewards."""


# --------------------------------------------------------------------------- training objectives


def as_ranking(record: dict) -> tuple[list[str], list[int]]:
    """A comparison or ranking record as (completions, order best first)."""
    if record["kind"] == "comparison":
        return [record["chosen"], record["rejected"]], [0, 1]
    return list(record["completions"]), list(record["order"])


@dataclass(frozen=True)
class PromptGroups:
    """Comparisons and rankings in groups (a batch is a set of groups), every distinct text tokenized once.

    With groups by prompt, a batch holds prompts with all their records (InstructGPT's
    batching, Ouyang et al. 2022, sec. 3.5): each completion is scored once per step however
    many comparisons it appears in, so K completions cost K forward passes, not K(K-1).
    With one record per group, batches are plain shuffled records; a text appearing
    twice in one batch is still scored once. Either way a batch is scored packed
    (`rlhf_lens.packing`): each prompt once, then its completions, with no padding.
    """

    texts: list[tuple[list[int], list[int]]]
    """(BOS + prompt, completion) ids of each distinct text."""
    ranked: list[list[int]]
    """Per record: indices into `texts`, best first (a comparison is [chosen, rejected])."""
    groups: list[list[int]]
    """Per prompt: the indices of its records."""

    @classmethod
    def of(cls, records: Sequence[dict], tokenizer, context: int, *, by_prompt: bool = True) -> PromptGroups:
        """Group records by prompt, or (by_prompt=False) make each record its own group: plain shuffled batches."""
        text_index: dict[tuple[str, str], int] = {}
        ranked, groups = [], {}
        for i, record in enumerate(records):
            completions, order = as_ranking(record)
            ranked.append([text_index.setdefault((record["prompt"], completions[j]), len(text_index)) for j in order])
            groups.setdefault(record["prompt"] if by_prompt else i, []).append(i)
        texts = list(text_index)
        return cls(reward_input_parts(tokenizer, [p for p, _ in texts], [c for _, c in texts], context), ranked, list(groups.values()))

    def groups_per_batch(self, records_per_batch: int) -> int:
        """How many groups give about `records_per_batch` records on average."""
        return max(1, round(records_per_batch * len(self.groups) / len(self.ranked)))


def ranking_loss(model, pad_id: int, data: PromptGroups, prompt_indices: Sequence[int], margin: float) -> torch.Tensor:
    """Bradley-Terry over the pairs, Plackett-Luce over K > 2 rankings of some prompts, weighted by record count."""
    records = [r for g in prompt_indices for r in data.groups[g]]
    texts = sorted({t for r in records for t in data.ranked[r]})
    position = {t: i for i, t in enumerate(texts)}
    rewards = packed_rewards(model, pack_texts([data.texts[t] for t in texts], pad_id))  # (n_texts,)
    by_k: dict[int, list[list[int]]] = {}
    for r in records:
        by_k.setdefault(len(data.ranked[r]), []).append([position[t] for t in data.ranked[r]])
    total = torch.zeros((), device=rewards.device)
    for k, rows in by_k.items():
        ranked = rewards[torch.tensor(rows, device=rewards.device)]  # (n, k), best first
        if k == 2:
            loss = bradley_terry_loss(ranked[:, 0], ranked[:, 1], margin)
        else:
            loss = plackett_luce_loss(ranked, torch.arange(k, device=rewards.device).expand(len(rows), k))
        total = total + loss * len(rows) / len(records)
    return total


def rating_loss(model, tokenizer, records: Sequence[dict]) -> torch.Tensor:
    texts = reward_input_parts(tokenizer, [r["prompt"] for r in records], [r["completion"] for r in records], context_length(model))
    predicted = packed_rewards(model, pack_texts(texts, tokenizer.pad_token_id))
    ratings = torch.tensor([r["rating"] for r in records], device=predicted.device)
    return rating_regression_loss(predicted, ratings)


def critique_examples(records: Sequence[dict], tokenizer, context: int) -> PromptCompletions:
    """Two examples per critique record: critique then verdict, and the verdict alone."""
    prefixes, targets = [], []
    for r in records:
        verdict = " " + r["verdict"]
        prefixes.append(r["prompt"] + r["completion"] + CRITIQUE_MARK)
        targets.append(" " + r["critique"].strip() + VERDICT_MARK + verdict)
        prefixes.append(r["prompt"] + r["completion"] + VERDICT_MARK)
        targets.append(verdict)
    eos = tokenizer.eos_token_id
    # A target keeps at most context - 1 tokens so at least one prefix token (BOS or text) precedes it.
    target_ids = [(ids + [eos])[: context - 1] for ids in tokenizer(targets, add_special_tokens=False)["input_ids"]]
    prefix_ids = [p[len(p) - min(len(p), context - len(t)) :] for p, t in zip(encode_prompts(tokenizer, prefixes), target_ids)]
    return PromptCompletions(prefix_ids, target_ids)


def reward_objective(stage, model, tokenizer, feedback: Feedback, evaluate: Callable[[], dict]) -> Objective:
    """The training objective of `stage.reward_kind` over `feedback.train`."""
    records = feedback.train
    if stage.reward_kind == "ranking":
        groups = PromptGroups.of(records, tokenizer, context_length(model), by_prompt=stage.group_by_prompt)
        loss = lambda idx: ranking_loss(model, tokenizer.pad_token_id, groups, idx, stage.margin)  # noqa: E731
        return Objective(
            n_items=len(groups.groups), train_loss=loss, evaluate=evaluate, batch_size=groups.groups_per_batch(stage.batch_size)
        )
    elif stage.reward_kind == "scoring":
        loss = lambda idx: rating_loss(model, tokenizer, [records[i] for i in idx])  # noqa: E731
    else:
        examples = critique_examples(records, tokenizer, context_length(model))
        # examples 2i and 2i+1 come from record i: train on both forms of the same record together.
        loss = lambda idx: completion_nll(model, examples.select([2 * i + j for i in idx for j in (0, 1)]), tokenizer.pad_token_id)  # noqa: E731
    return Objective(n_items=len(records), train_loss=loss, evaluate=evaluate)


# --------------------------------------------------------------------------- rewards and evaluation


def reward_function(stage, model, tokenizer) -> RewardFn:
    """reward_fn(prompts, completions) for the trained model (centring offset applied)."""
    if stage.reward_kind != "generative":
        return lambda prompts, completions: score_texts(model, tokenizer, prompts, completions).numpy()

    return lambda prompts, completions: judge_texts(
        model, tokenizer, prompts, completions, critique_first=stage.critique_first, critique_max_tokens=stage.critique_max_tokens
    ).numpy()


def evaluate_reward(reward_fn: RewardFn, feedback: Feedback, gold_fn: Callable | None) -> tuple[dict[str, float], dict]:
    """Held-out metrics under the `rm/` keys, plus the calibration bins and feedback audit (for meta.json)."""
    texts = feedback.eval_texts()
    prompts, completions = [p for p, _ in texts], [c for _, c in texts]
    rewards = dict(zip(texts, reward_fn(prompts, completions).tolist()))
    pairs = feedback.eval_pairs
    r_chosen = np.array([rewards[(r["prompt"], r["chosen"])] for r in pairs])
    r_rejected = np.array([rewards[(r["prompt"], r["rejected"])] for r in pairs])
    ece, bins = calibration(sigmoid(r_chosen - r_rejected))
    lengths = np.array([len(c.split()) for c in completions], dtype=float)
    metrics = {
        "rm/accuracy": pairwise_accuracy(r_chosen, r_rejected),
        "rm/margin_mean": float(np.mean(r_chosen - r_rejected)),
        "rm/length_corr": linear_correlation(np.array([rewards[t] for t in texts]), lengths),
        "rm/ece": ece,
        "rm/labeler_agreement": labeler_agreement(pairs),
    }
    gold = None
    if gold_fn is not None:
        gold = dict(zip(texts, np.asarray(gold_fn(prompts, completions), dtype=float).tolist()))
        g_chosen = np.array([gold[(r["prompt"], r["chosen"])] for r in pairs])
        g_rejected = np.array([gold[(r["prompt"], r["rejected"])] for r in pairs])
        metrics["rm/accuracy_gold"] = gold_accuracy(r_chosen, r_rejected, g_chosen, g_rejected)
        metrics["rm/spearman_gold"] = rank_correlation(np.array([rewards[t] for t in texts]), np.array([gold[t] for t in texts]))
        metrics["rm/label_accuracy_gold"] = gold_accuracy(np.ones(len(pairs)), np.zeros(len(pairs)), g_chosen, g_rejected)
    audit = {
        "labeler_agreement": metrics["rm/labeler_agreement"],
        "labelers": labeler_profiles(pairs, gold),
        "disputed": disputed_records(pairs, r_chosen, r_rejected),
        "calibration": bins,
        "heldout_pairs": len(pairs),
        "heldout_texts": len(texts),
    }
    return metrics, audit


@torch.no_grad()
def example_critiques(stage, model, tokenizer, texts: Sequence[tuple[str, str]]) -> list[dict]:
    """Critiques the generative reward model writes for some held-out texts, with their rewards."""
    prompts, completions = [p for p, _ in texts], [c for _, c in texts]
    critiques = write_critiques(model, tokenizer, prompts, completions, max_new_tokens=stage.critique_max_tokens)
    rewards = generative_rewards(model, tokenizer, prompts, completions, critiques if stage.critique_first else None)
    return [
        {"prompt": p, "completion": c, "critique": k, "reward": float(r)} for p, c, k, r in zip(prompts, completions, critiques, rewards)
    ]
