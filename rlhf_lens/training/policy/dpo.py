"""Direct preference optimisation from preference pairs (offline; Rafailov et al. 2023).

Pairs come from a feedback file or from the comparisons of this run's reward
stages (data/feedback.jsonl): their train split trains, their eval split measures
the held-out accuracy of the implicit reward beta * log(pi / pi_ref).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from rlhf_lens.models import context_length, encode_prompts
from rlhf_lens.runs import checkpoint_tag
from rlhf_lens.tasks import read_feedback
from rlhf_lens.tasks.agreement import comparisons_from, gold_accuracy
from rlhf_lens.training.data import batch_indices, is_heldout_prompt
from rlhf_lens.training.losses import dpo_loss
from rlhf_lens.training.optim import BadStepCounter, make_optimizer, restore_training_state, training_state
from rlhf_lens.training.policy.evaluation import evaluate_policy
from rlhf_lens.training.policy.rollout import token_logprobs
from rlhf_lens.training.policy.setup import PolicySetup
from rlhf_lens.training.policy.update import apply_gradients
from rlhf_lens.training.steps import Cadence, progress

HELDOUT_FRACTION = 0.2
HELDOUT_SALT = "dpo"  # DPO's hash split differs from a reward stage's on the same file (kept: existing runs' splits)


@dataclass(frozen=True)
class Pairs:
    """Tokenized preference pairs."""

    records: list[dict]
    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]

    @classmethod
    def of(cls, records: list[dict], tokenizer, context: int) -> Pairs:
        """Tokenize BOS + prompt and completion + EOS; a pair too long for the context keeps its completions
        (at most context - 1 tokens) and the last tokens of its prompt, with a warning."""
        eos = tokenizer.eos_token_id

        def completion_ids(texts):
            return [(ids + [eos])[: context - 1] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

        chosen, rejected = completion_ids([r["chosen"] for r in records]), completion_ids([r["rejected"] for r in records])
        prompts, cut = [], 0
        for ids, c, r in zip(encode_prompts(tokenizer, [r["prompt"] for r in records]), chosen, rejected):
            budget = context - max(len(c), len(r))
            cut += len(ids) > budget
            prompts.append(ids[len(ids) - min(len(ids), budget) :])
        if cut:
            warnings.warn(
                f"{cut} of {len(records)} preference pairs are longer than the policy's context of {context} tokens; "
                "their prompts keep their last tokens.",
                stacklevel=2,
            )
        return cls(records, prompts, chosen, rejected)

    def __len__(self) -> int:
        return len(self.records)


def preference_pairs(stage, feedback_records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) comparisons for DPO, from stage.feedback or the run's feedback records.

    A file whose records all carry a "split" (a run's data/feedback.jsonl) keeps it; otherwise
    HELDOUT_FRACTION of the prompts are held out by hash."""
    if stage.feedback:
        records = read_feedback(stage.feedback)
        if all(r.get("split") in ("train", "eval") for r in records):  # e.g. another run's data/feedback.jsonl
            is_heldout = [r["split"] == "eval" for r in records]
        else:
            is_heldout = [is_heldout_prompt(r["prompt"], HELDOUT_FRACTION, seed, salt=HELDOUT_SALT) for r in records]
        train = comparisons_from([r for r, h in zip(records, is_heldout) if not h])
        heldout = comparisons_from([r for r, h in zip(records, is_heldout) if h])
        where = stage.feedback
    else:
        train = comparisons_from([r for r in feedback_records if r.get("split") == "train"])
        heldout = comparisons_from([r for r in feedback_records if r.get("split") == "eval"])
        where = "this run's feedback (data/feedback.jsonl)"
    if not train or not heldout:
        raise ValueError(
            f"stages.{stage.name}: DPO needs preference pairs to train on and held-out pairs to evaluate; {where} gives "
            f"{len(train)} and {len(heldout)}. Put a reward stage (which collects feedback) before it or set "
            f"stages.{stage.name}.feedback to a JSONL/HH/CSV file."
        )
    return train, heldout


def sequence_logps(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """log p(completion | prompt) summed over each completion's tokens: -> (n,)."""
    width = max(1, max(len(c) for c in completion_ids))
    return token_logprobs(model, prompt_ids, completion_ids, pad_id, width).sum(-1)


def pair_logps(model, pairs: Pairs, rows: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence logprobs of the chosen and rejected completions of some pairs: -> (n,), (n,)."""
    prompts = [pairs.prompt_ids[i] for i in rows] * 2
    completions = [pairs.chosen_ids[i] for i in rows] + [pairs.rejected_ids[i] for i in rows]
    logps = sequence_logps(model, prompts, completions, pad_id)  # (2n,)
    return logps[: len(rows)], logps[len(rows) :]


def distinct_texts(pairs: Pairs) -> tuple[list[tuple[tuple[int, ...], tuple[int, ...]]], np.ndarray, np.ndarray]:
    """The distinct (prompt ids, completion ids) of some pairs, and each pair's chosen and rejected index into them.

    Held-out feedback judges each pair several times (once per labeler) and each completion in
    K-1 pairs: the texts are far fewer than the pairs' sides.
    """
    index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    chosen = [index.setdefault((tuple(p), tuple(c)), len(index)) for p, c in zip(pairs.prompt_ids, pairs.chosen_ids)]
    rejected = [index.setdefault((tuple(p), tuple(r)), len(index)) for p, r in zip(pairs.prompt_ids, pairs.rejected_ids)]
    return list(index), np.array(chosen, dtype=int), np.array(rejected, dtype=int)


@torch.no_grad()
def text_logps(model, texts: list[tuple[tuple[int, ...], tuple[int, ...]]], pad_id: int, batch_size: int) -> np.ndarray:
    """Sequence logprob of each (prompt ids, completion ids): -> (n,)."""
    chunks = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    logps = [sequence_logps(model, [list(p) for p, _ in chunk], [list(c) for _, c in chunk], pad_id).float().cpu() for chunk in chunks]
    return torch.cat(logps).numpy()


@torch.no_grad()
def heldout_metrics(setup: PolicySetup, pairs: Pairs, beta: float, batch_size: int = 128) -> dict[str, float]:
    """Held-out accuracy of the implicit reward (ties count half), against the labels and the oracle."""
    pad_id = setup.tokenizer.pad_token_id
    texts, chosen, rejected = distinct_texts(pairs)
    logps = text_logps(setup.policy, texts, pad_id, batch_size)  # (n_texts,)
    ref_logps = text_logps(setup.reference, texts, pad_id, batch_size)
    margin = beta * ((logps[chosen] - ref_logps[chosen]) - (logps[rejected] - ref_logps[rejected]))
    ref_margin = ref_logps[chosen] - ref_logps[rejected]
    metrics = {
        "eval/rewards/accuracies": float(np.mean((margin > 0) + 0.5 * (margin == 0))),
        "eval/rewards/margins": float(margin.mean()),
        "eval/ref_logp_accuracy": float(np.mean(ref_margin > 0)),
    }
    if setup.gold_fn is not None:
        prompts = [r["prompt"] for r in pairs.records]
        g_chosen = np.asarray(setup.gold_fn(prompts, [r["chosen"] for r in pairs.records]))
        g_rejected = np.asarray(setup.gold_fn(prompts, [r["rejected"] for r in pairs.records]))
        metrics["eval/accuracy_gold"] = gold_accuracy(margin, np.zeros_like(margin), g_chosen, g_rejected)
    return metrics


def run_dpo(stage, setup: PolicySetup, writer, feedback_records: list[dict], *, seed: int, quiet: bool, resume: dict | None) -> dict:
    """Train with DPO; save `final`; return the stage's results for run.json."""
    world = setup.world
    train, heldout = tokenized_pairs(stage, setup, feedback_records, seed)
    optimizer, scheduler = make_optimizer(setup.policy, stage.lr, stage.weight_decay, stage.warmup_steps, stage.steps)
    model = torch.nn.parallel.DistributedDataParallel(setup.policy) if world.distributed else setup.policy
    start, results = start_or_resume(stage, setup, heldout, optimizer, scheduler, writer, seed, resume)
    results = {"train_pairs": len(train), "heldout_pairs": len(heldout)} | results
    cadence, bad, metrics = Cadence.of(stage), BadStepCounter.of(stage), {}
    bar = progress(cadence, start, f"{stage.name} (dpo)", quiet=quiet or not world.is_main)
    for step in bar:
        rows = world.shard(batch_indices(len(train), stage.batch_size, seed, step))
        loss, stats = pair_loss(model, setup, train, rows, stage.dpo_beta)
        share = len(rows) / stage.batch_size  # this process's share of the global mean
        learning_rate = scheduler.get_last_lr()[0]
        applied = apply_gradients(loss * share * world.size, optimizer, stage.grad_clip, world)
        scheduler.step()
        if not applied:
            writer.log_event("nan_skip", stage=stage.name, step=step, what="loss or gradient")
            bad.bad(step, "losses or gradients")
            continue
        bad.ok()
        metrics = {"loss": global_mean(loss.detach().expand(len(rows)), stage.batch_size, world)}
        metrics |= {key: global_mean(value, stage.batch_size, world) for key, value in stats.items()} | {"learning_rate": learning_rate}
        if cadence.is_eval_step(step) and world.is_main:
            metrics |= heldout_metrics(setup, heldout, stage.dpo_beta) | evaluate_policy(setup, stage, seed, writer, step)
        world.barrier()
        writer.log_metrics(stage.name, step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if cadence.is_save_step(step):
            save(
                writer,
                stage,
                checkpoint_tag(step),
                setup,
                step,
                metrics,
                training_state(optimizer, scheduler, step, extra={"start": results}),
            )
    save(writer, stage, "final", setup, stage.steps, metrics, training_state(optimizer, scheduler, stage.steps, extra={"start": results}))
    return results | {k: v for k, v in metrics.items() if k.startswith("eval/")} | {"algorithm": "dpo"}


def tokenized_pairs(stage, setup: PolicySetup, feedback_records: list[dict], seed: int) -> tuple[Pairs, Pairs]:
    """The (train, held-out) preference pairs, tokenized for the policy's context."""
    train_records, heldout_records = preference_pairs(stage, feedback_records, seed)
    context = context_length(setup.policy)
    return Pairs.of(train_records, setup.tokenizer, context), Pairs.of(heldout_records, setup.tokenizer, context)


def start_or_resume(
    stage, setup: PolicySetup, heldout: Pairs, optimizer, scheduler, writer, seed: int, resume: dict | None
) -> tuple[int, dict]:
    """(the step to continue after, the start-of-stage evaluation): restored from a resume checkpoint, or measured
    on the starting policy by rank 0."""
    if resume is not None:
        start = restore_training_state(resume["state"], optimizer, scheduler)
        return start, dict(resume["state"]["extra"].get("start", {}))
    results = {}
    if setup.world.is_main:
        start_metrics = heldout_metrics(setup, heldout, stage.dpo_beta) | evaluate_policy(setup, stage, seed, writer, 0)
        results = {f"start_{k}": v for k, v in start_metrics.items()}
    setup.world.barrier()
    return 0, results


def pair_loss(model, setup: PolicySetup, pairs: Pairs, rows: list[int], beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss of some pairs and the per-pair quantities logged under the DESIGN.md keys: -> (), {key: (n,)}."""
    pad_id = setup.tokenizer.pad_token_id
    with setup.autocast():
        chosen, rejected = pair_logps(model, pairs, rows, pad_id)
        with torch.no_grad():
            ref_chosen, ref_rejected = pair_logps(setup.reference, pairs, rows, pad_id)
        loss, r_chosen, r_rejected = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    stats = {
        "rewards/chosen": r_chosen,
        "rewards/rejected": r_rejected,
        "rewards/margins": r_chosen - r_rejected,
        "rewards/accuracies": (r_chosen > r_rejected).float(),
        "logps/chosen": chosen,
        "logps/rejected": rejected,
    }
    return loss, stats


def global_mean(values: torch.Tensor, batch_size: int, world) -> float:
    """Mean over the global batch of a per-pair quantity of this process's pairs: (n,) -> float."""
    return float(world.sum(values.detach().float().sum())) / batch_size


def save(writer, stage, tag: str, setup: PolicySetup, step: int, metrics: dict, state: dict) -> None:
    """A DPO checkpoint: the policy and its training state (the start-of-stage evaluation in `extra`)."""
    writer.save_checkpoint(
        stage.name,
        tag,
        model=setup.policy,
        tokenizer=setup.tokenizer,
        step=step,
        metrics=metrics,
        state=state,
        extra_meta={"algorithm": "dpo"},
    )
