"""What the feedback and reward-model analyses share: a reward stage's held-out feedback as its trainer
evaluated it, the oracle's scores of it, and a checkpoint's rewards for it, scored once per process.

Private (the registry skips modules whose name starts with "_"): the analyses in `feedback` and
`reward_model` both score the final reward checkpoint on the same texts, and in one `analyze` call
they share one scoring pass instead of loading and scoring the model three times.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rlhf_lens.models import load_reward_function
from rlhf_lens.runs import Run, RunLookupError, data_path
from rlhf_lens.tasks import get_task
from rlhf_lens.tasks.agreement import (
    calibration,
    comparisons_from,
    gold_accuracy,
    labeler_agreement,
    linear_correlation,
    pairwise_accuracy,
    rank_correlation,
    sigmoid,
)

# Per-process caches (mutable state, not constants: lower case, so they are not taken for settings).
_rewards_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
"""Rewards of the checkpoints scored in this process, by checkpoint, feedback file, stage and chunk."""
_REWARDS_KEPT = 16
"""Scored checkpoints kept in memory (a few KB each)."""


_feedback_cache: dict[tuple, list[dict]] = {}
"""data/feedback.jsonl of the run read last, by path, size, mtime and recorded digest."""


def feedback_records(run: Run) -> list[dict]:
    """data/feedback.jsonl, with "labeler", "split" and "stage" always present as text ("" when a record has none).

    Read (and checked against run.json) once per process while the file is unchanged; callers must not modify it.
    """
    path = data_path(run.path, "feedback")
    stat = path.stat() if path.is_file() else None
    key = (
        str(path),
        stat.st_size if stat else None,
        stat.st_mtime_ns if stat else None,
        run.manifest["data"].get("feedback.jsonl", {}).get("sha256"),
    )
    if key not in _feedback_cache:
        _feedback_cache.clear()  # one run's feedback at a time
        _feedback_cache[key] = [
            {**r, "labeler": _text(r.get("labeler")), "split": _text(r.get("split")), "stage": _text(r.get("stage"))}
            for r in run.data("feedback")
        ]
    return _feedback_cache[key]


def _text(value) -> str:
    return "" if value is None else str(value)


def oracle(run: Run) -> Callable[[Sequence[str], Sequence[str]], np.ndarray] | None:
    """The task's gold reward (prompts, completions) -> (n,), or None when the task has no oracle."""
    options = run.config.get("task", {}).get("options", {})
    task = get_task(run.task, **options)
    return task.gold_reward if getattr(task, "has_oracle", False) else None


def gold_of(run: Run, texts: Sequence[tuple[str, str]]) -> np.ndarray | None:
    """The oracle's score of each (prompt, completion), or None without an oracle."""
    gold_fn = oracle(run)
    if gold_fn is None:
        return None
    if not texts:
        return np.zeros(0)
    return np.asarray(gold_fn([p for p, _ in texts], [c for _, c in texts]), dtype=float)


@dataclass(frozen=True)
class HeldOut:
    """A reward stage's held-out feedback, exactly as its trainer evaluated the reward model on it."""

    stage: str
    pairs: list[dict]
    """Comparisons implied by the stage's held-out records (split "eval"), in file order: the trainer's eval pairs."""
    texts: list[tuple[str, str]]
    """Distinct (prompt, completion) of those pairs, first-seen order (what the trainer scored)."""
    chosen: np.ndarray
    """(pairs,) index into `texts` of each pair's chosen side."""
    rejected: np.ndarray
    """(pairs,) index into `texts` of each pair's rejected side."""
    gold: np.ndarray | None
    """(texts,) the oracle's score of each text; None when the task has none."""

    @property
    def lengths(self) -> np.ndarray:
        """(texts,) completion length in words, as the trainer counts them."""
        return np.array([len(c.split()) for _, c in self.texts], dtype=float)


def missing_heldout(run: Run, stage: str | None) -> str | None:
    """Why reward stage `stage` cannot be evaluated from the files (no held-out comparisons tagged with it), or None."""
    records = [r for r in feedback_records(run) if r["stage"] == stage and r["split"] == "eval"]
    if comparisons_from(records):
        return None
    return (
        f"data/feedback.jsonl has no held-out comparisons of reward stage {stage!r} (runs written before feedback records "
        "were tagged with their split and stage cannot be evaluated from the files)"
    )


def heldout(run: Run, stage: str) -> HeldOut:
    """The held-out feedback of reward stage `stage`; RunLookupError when data/feedback.jsonl has none for it."""
    records = [r for r in feedback_records(run) if r["stage"] == stage and r["split"] == "eval"]
    pairs = comparisons_from(records)
    if not pairs:
        raise RunLookupError(
            f"run {run.path}: data/feedback.jsonl has no held-out comparisons of reward stage {stage!r} "
            '(records with "split": "eval" and "stage": ' + f"{stage!r}); runs written before feedback records were tagged "
            "with their split and stage cannot be evaluated from the files: retrain the reward stage"
        )
    index: dict[tuple[str, str], int] = {}
    for r in pairs:
        index.setdefault((r["prompt"], r["chosen"]), len(index))
        index.setdefault((r["prompt"], r["rejected"]), len(index))
    texts = list(index)
    chosen = np.array([index[(r["prompt"], r["chosen"])] for r in pairs])
    rejected = np.array([index[(r["prompt"], r["rejected"])] for r in pairs])
    return HeldOut(stage, pairs, texts, chosen, rejected, gold_of(run, texts))


def checkpoint_rewards(run: Run, stage: str, tag: str, data: HeldOut, *, chunk: int = 128) -> np.ndarray:
    """(texts,) rewards of `data.texts` from checkpoint `tag` of `stage`, read as the policy stage reads it
    (`rlhf_lens.models.load_reward_function`: centring offset applied, generative models write their critique
    first). Each distinct text is scored once; a checkpoint already scored in this process (with the same `chunk`)
    is not scored again.

    `chunk` texts go to the reward model per call (one progress-bar step). It batches them by 64, padding each
    batch, so a multiple of 64 gives the trainer's own batches and reproduces its meta.json figures to the last
    digits; another chunk changes the padding and the rewards in their last digits."""
    from tqdm.auto import tqdm

    if chunk < 1:
        raise ValueError(f"checkpoint_rewards: chunk must be a positive number of texts, got {chunk}")
    cp = run.checkpoint(stage, tag)
    key = (str(cp.path), cp.meta.get("created"), run.manifest["data"].get("feedback.jsonl", {}).get("sha256"), stage, chunk)
    if key in _rewards_cache:
        _rewards_cache.move_to_end(key)
        return _rewards_cache[key]
    reward_fn = load_reward_function(cp.path, "cpu")
    chunks = [data.texts[i : i + chunk] for i in range(0, len(data.texts), chunk)]
    parts = [
        np.asarray(reward_fn([p for p, _ in part], [c for _, c in part]), dtype=float).reshape(-1)
        for part in tqdm(chunks, desc=f"scoring {stage}/{tag}", unit="chunk", leave=False, disable=True if len(chunks) < 4 else None)
    ]
    rewards = np.concatenate(parts) if parts else np.zeros(0)
    if rewards.shape != (len(data.texts),):
        raise ValueError(f"{cp.path}: the reward model returned {rewards.size} rewards for {len(data.texts)} texts")
    _rewards_cache[key] = rewards
    while len(_rewards_cache) > _REWARDS_KEPT:
        _rewards_cache.popitem(last=False)
    return rewards


METRIC_KEYS = {
    "accuracy": "rm/accuracy",
    "accuracy_gold": "rm/accuracy_gold",
    "labeler_agreement": "rm/labeler_agreement",
    "label_accuracy_gold": "rm/label_accuracy_gold",
    "spearman_gold": "rm/spearman_gold",
    "ece": "rm/ece",
    "length_corr": "rm/length_corr",
    "margin_mean": "rm/margin_mean",
}
"""Our column -> the trainer's key in meta.json and metrics.jsonl."""


def reward_figures(rewards: np.ndarray, data: HeldOut) -> dict[str, float]:
    """The trainer's held-out figures (`evaluate_reward`, under METRIC_KEYS' names) of `rewards` on `data`;
    the gold figures are NaN without an oracle."""
    r_chosen, r_rejected = rewards[data.chosen], rewards[data.rejected]
    figures = {
        "accuracy": pairwise_accuracy(r_chosen, r_rejected),
        "margin_mean": float(np.mean(r_chosen - r_rejected)),
        "length_corr": linear_correlation(rewards, data.lengths),
        "ece": calibration(sigmoid(r_chosen - r_rejected))[0],
        "labeler_agreement": labeler_agreement(data.pairs),
        "accuracy_gold": float("nan"),
        "spearman_gold": float("nan"),
        "label_accuracy_gold": float("nan"),
    }
    if data.gold is not None:
        g_chosen, g_rejected = data.gold[data.chosen], data.gold[data.rejected]
        figures["accuracy_gold"] = gold_accuracy(r_chosen, r_rejected, g_chosen, g_rejected)
        figures["spearman_gold"] = rank_correlation(rewards, data.gold)
        figures["label_accuracy_gold"] = gold_accuracy(np.ones(len(r_chosen)), np.zeros(len(r_chosen)), g_chosen, g_rejected)
    return figures
