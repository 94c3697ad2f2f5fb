"""Agreement of rewards with feedback and with the oracle, and the audit of feedback: pure functions of arrays
and records, shared by the trainer (reward evaluation) and the analyses (the transparency record).

Every reward kind is evaluated the same way, on held-out comparisons: agreement
with the labels and with the oracle's ordering, rank correlation with the
oracle, calibration of P(chosen > rejected), and the reward-length correlation.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def pairwise_accuracy(chosen_rewards: np.ndarray, rejected_rewards: np.ndarray) -> float:
    """Share of pairs where the chosen side scores higher; a tie counts one half."""
    diff = np.asarray(chosen_rewards) - np.asarray(rejected_rewards)
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def gold_accuracy(rewards_a: np.ndarray, rewards_b: np.ndarray, gold_a: np.ndarray, gold_b: np.ndarray) -> float:
    """Agreement of the reward ordering with the oracle's, over pairs the oracle does not tie."""
    gold_diff = np.asarray(gold_a) - np.asarray(gold_b)
    keep = gold_diff != 0
    if not keep.any():
        return float("nan")
    sign = np.sign(gold_diff[keep])
    return pairwise_accuracy(sign * np.asarray(rewards_a)[keep], sign * np.asarray(rewards_b)[keep])


def rank_correlation(rewards: np.ndarray, gold: np.ndarray) -> float:
    """Spearman correlation of rewards with the oracle."""
    if len(rewards) < 3 or np.std(rewards) == 0 or np.std(gold) == 0:
        return float("nan")
    return float(spearmanr(rewards, gold).statistic)


def linear_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, NaN when either side is constant."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(pearsonr(x, y).statistic)


def calibration(p_chosen: np.ndarray, n_bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error of P(chosen > rejected) against the labels (which chose `chosen`).

    Predictions are symmetrised (a pair and its mirror) so that every bin has
    both outcomes, as in the Anthropic HH reward-model calibration plots.
    Returns (ece, bins) with bins = [{"p_mean", "frequency", "count"}].
    """
    p = np.concatenate([p_chosen, 1.0 - np.asarray(p_chosen)])
    outcome = np.concatenate([np.ones(len(p_chosen)), np.zeros(len(p_chosen))])
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        in_bin = which == b
        if not in_bin.any():
            continue
        p_mean, freq = float(p[in_bin].mean()), float(outcome[in_bin].mean())
        ece += in_bin.mean() * abs(p_mean - freq)
        bins.append({"p_mean": p_mean, "frequency": freq, "count": int(in_bin.sum())})
    return float(ece), bins


# --------------------------------------------------------------------------- feedback audit


def _pair_key(record: dict) -> tuple[str, frozenset]:
    return record["prompt"], frozenset((record["chosen"], record["rejected"]))


def labeler_agreement(comparisons: Sequence[dict]) -> float:
    """Mean agreement of two different labelers judging the same pair: the ceiling for accuracy on labels."""
    by_pair: dict[tuple, dict[str, str]] = defaultdict(dict)
    for record in comparisons:
        by_pair[_pair_key(record)][record["labeler"]] = record["chosen"]
    agree = [a == b for choices in by_pair.values() for a, b in itertools.combinations(choices.values(), 2)]
    return float(np.mean(agree)) if agree else float("nan")


def labeler_profiles(comparisons: Sequence[dict], gold: dict[tuple[str, str], float] | None) -> dict[str, dict]:
    """Per labeler: how many pairs, agreement with the oracle, and how often the longer completion won."""
    profiles: dict[str, dict] = {}
    for name in sorted({r["labeler"] for r in comparisons}, key=str):
        mine = [r for r in comparisons if r["labeler"] == name]
        longer = [
            len(r["chosen"].split()) > len(r["rejected"].split()) for r in mine if len(r["chosen"].split()) != len(r["rejected"].split())
        ]
        profile = {"pairs": len(mine), "prefers_longer": float(np.mean(longer)) if longer else float("nan")}
        if gold is not None:
            decided = [gold[(r["prompt"], r["chosen"])] - gold[(r["prompt"], r["rejected"])] for r in mine]
            decided = [d for d in decided if d != 0]
            profile["gold_agreement"] = float(np.mean([d > 0 for d in decided])) if decided else float("nan")
        profiles[str(name)] = profile
    return profiles


def disputed_records(comparisons: Sequence[dict], chosen_rewards: np.ndarray, rejected_rewards: np.ndarray, top: int = 10) -> list[dict]:
    """The labels the reward model most strongly disagrees with (candidate mislabels), strongest first."""
    margin = np.asarray(rejected_rewards) - np.asarray(chosen_rewards)  # > 0: the model prefers the rejected side
    order = np.argsort(-margin)[:top]
    return [
        {
            "prompt": comparisons[i]["prompt"],
            "chosen": comparisons[i]["chosen"],
            "rejected": comparisons[i]["rejected"],
            "labeler": comparisons[i]["labeler"],
            "model_margin_for_rejected": float(margin[i]),
        }
        for i in order
        if margin[i] > 0
    ]


def comparisons_from(records: Sequence[dict]) -> list[dict]:
    """Pairwise comparisons implied by any feedback: rankings give all pairs, ratings and verdicts
    give pairs of the same prompt judged differently by the same labeler."""
    pairs: list[dict] = []
    by_prompt: dict[tuple, list[tuple[float, str]]] = {}
    for r in records:
        if r["kind"] == "comparison":
            pairs.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "labeler": r.get("labeler")})
        elif r["kind"] == "ranking":
            ranked = [r["completions"][i] for i in r["order"]]
            pairs += [
                {"prompt": r["prompt"], "chosen": a, "rejected": b, "labeler": r.get("labeler")}
                for a, b in itertools.combinations(ranked, 2)
                if a != b
            ]
        else:
            score = float(r["rating"]) if r["kind"] == "rating" else float(r["verdict"] == "good")
            by_prompt.setdefault((r["prompt"], r.get("labeler")), []).append((score, r["completion"]))
    for (prompt, labeler), judged in by_prompt.items():
        for (sa, a), (sb, b) in itertools.combinations(judged, 2):
            if sa != sb and a != b:
                chosen, rejected = (a, b) if sa > sb else (b, a)
                pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "labeler": labeler})
    return pairs
