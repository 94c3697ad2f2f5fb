"""The feedback a reward stage learns from and is evaluated on.

Either simulated (the starting policy samples K completions per prompt and the
task's noisy labelers judge them) or read from a file. Training records are of
the kind the reward model needs; evaluation is always on held-out *comparisons*,
judged by every labeler where they are simulated, so labeler agreement can be
measured on the same pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhf_lens.decoding import sample
from rlhf_lens.models import encode_prompts
from rlhf_lens.tasks import read_feedback, simulate_feedback
from rlhf_lens.tasks.agreement import comparisons_from
from rlhf_lens.training.data import is_heldout_prompt

TRAIN_KINDS = {"ranking": ("comparison", "ranking"), "scoring": ("rating",), "generative": ("critique",)}


@dataclass(frozen=True)
class Feedback:
    """Feedback split for one reward stage."""

    train: list[dict]
    """Records the reward model learns from (kinds in TRAIN_KINDS[reward_kind])."""
    eval_pairs: list[dict]
    """Held-out comparison records (one per labeler and pair when simulated)."""
    centring_texts: list[tuple[str, str]]
    """(prompt, completion) samples of the starting policy: the reward is centred to mean 0 on them."""
    records: list[dict]
    """Every record, tagged with "split" and "stage", as written to data/feedback.jsonl."""

    def eval_texts(self) -> list[tuple[str, str]]:
        """Distinct (prompt, completion) pairs of the held-out comparisons, in first-seen order."""
        seen: dict[tuple[str, str], None] = {}
        for r in self.eval_pairs:
            seen.setdefault((r["prompt"], r["chosen"]))
            seen.setdefault((r["prompt"], r["rejected"]))
        return list(seen)


def sample_items(
    policy: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    k: int,
    *,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 64,
    quiet: bool = True,
) -> list[dict]:
    """K sampled completions per prompt: -> [{"prompt", "completions": [...]}]. Seeds are per sample."""
    flat = [p for p in prompts for _ in range(k)]
    texts: list[str] = []
    for start in tqdm(range(0, len(flat), batch_size), desc="sampling for feedback", unit="batch", disable=quiet):
        chunk = flat[start : start + batch_size]
        seeds = [seed * 1_000_003 + start + i for i in range(len(chunk))]
        texts += sample(policy, tokenizer, encode_prompts(tokenizer, chunk), seeds, max_new_tokens=max_new_tokens).texts
    return [{"prompt": p, "completions": texts[i * k : (i + 1) * k]} for i, p in enumerate(prompts)]


def _tag(records: list[dict], split: str, stage: str) -> list[dict]:
    return [{**r, "split": split, "stage": stage} for r in records]


def simulate(
    stage, labelers, policy, tokenizer, train_prompts: list[str], eval_prompts: list[str], *, seed: int, quiet: bool = True
) -> Feedback:
    """Sample from `policy` and let the simulated labelers judge (see the module docstring)."""
    k, max_new = stage.completions_per_prompt, stage.max_new_tokens
    train_items = sample_items(
        policy, tokenizer, train_prompts[: stage.feedback_prompts], k, max_new_tokens=max_new, seed=seed, quiet=quiet
    )
    eval_items = sample_items(policy, tokenizer, eval_prompts, k, max_new_tokens=max_new, seed=seed + 1, quiet=quiet)
    train_kind = {
        "ranking": "ranking" if stage.ranking_loss == "plackett_luce" else "comparison",
        "scoring": "rating",
        "generative": "critique",
    }[stage.reward_kind]
    train = simulate_feedback(train_kind, train_items, labelers)
    names = [p.name for p in labelers.profiles]
    eval_pairs = [
        labelers.compare(item["prompt"], a, b, labeler=name)
        for item in eval_items
        for a, b in itertools.combinations(item["completions"], 2)
        if a != b
        for name in names
    ]
    centring = [(item["prompt"], c) for item in train_items for c in item["completions"]]
    return Feedback(train, eval_pairs, centring, _tag(train, "train", stage.name) + _tag(eval_pairs, "eval", stage.name))


def from_file(stage, path: str | Path, *, seed: int) -> Feedback:
    """Feedback read from a file, split by prompt into train and held-out."""
    records = read_feedback(path)
    usable = TRAIN_KINDS[stage.reward_kind]
    kinds = sorted({r["kind"] for r in records})
    if not any(r["kind"] in usable for r in records):
        raise ValueError(
            f"{path}: no records a {stage.reward_kind} reward model can learn from (it needs {' or '.join(usable)} "
            f"records; the file has {', '.join(kinds) or 'none'}). Set stages.{stage.name}.reward_kind to match the feedback."
        )
    heldout = [r for r in records if is_heldout_prompt(r["prompt"], stage.heldout_fraction, seed)]
    train = [r for r in records if not is_heldout_prompt(r["prompt"], stage.heldout_fraction, seed) and r["kind"] in usable]
    eval_pairs = comparisons_from(heldout)
    if not train or not eval_pairs:
        raise ValueError(
            f"{path}: after holding out {stage.heldout_fraction:.0%} of the prompts there are {len(train)} training "
            f"records and {len(eval_pairs)} held-out comparisons; both must be non-empty. Add feedback or change "
            f"stages.{stage.name}.heldout_fraction."
        )
    centring = list(dict.fromkeys((r["prompt"], c) for r in train for c in _completions(r)))
    tagged = _tag(train, "train", stage.name) + _tag(heldout, "eval", stage.name)
    return Feedback(train, eval_pairs, centring, tagged)


def _completions(record: dict) -> list[str]:
    if record["kind"] == "comparison":
        return [record["chosen"], record["rejected"]]
    if record["kind"] == "ranking":
        return list(record["completions"])
    return [record["completion"]]
