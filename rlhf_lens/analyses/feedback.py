"""Feedback: what the reward models learned from, who gave it, how much the labelers agree, and which labels
the trained reward model disputes (the transparency record of the "human" in RLHF)."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses._heldout import checkpoint_rewards, feedback_records, gold_of, heldout, missing_heldout
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict, judge, worst
from rlhf_lens.runs import FINAL_TAG, Run
from rlhf_lens.tasks.agreement import comparisons_from, disputed_records, labeler_agreement, labeler_profiles

register_section(
    "feedback",
    "Feedback",
    order=20,
    intro="The judgements the reward models learned from: how many of each kind, split and stage; who the labelers are, "
    "how often they agree with each other (the ceiling for a reward model's accuracy on their labels), with the oracle, "
    "and with the longer answer; and the held-out labels each trained reward model disputes most (candidate mislabels).",
)

KINDS = ("comparison", "ranking", "rating", "critique")
"""Feedback kinds in DESIGN.md's order."""


# --------------------------------------------------------------------------- counts


class FeedbackCountsResult(Result):
    """Feedback records by stage, split and kind. Columns: stage, split ("train" | "eval"; "" when untagged),
    kind (comparison, ranking, rating, critique), records, pairs (the pairwise comparisons they imply, as
    `comparisons_from` derives them), prompts (distinct), labelers (distinct)."""

    columns = ("stage", "split", "kind", "records", "pairs", "prompts", "labelers")
    heading = "Feedback records"

    def headlines(self) -> list[tuple[str, str]]:
        by_kind = self.df.groupby("kind", sort=False)["records"].sum()
        kinds = [(f"{k} records", f"{int(n):,}") for k, n in by_kind.items()] if len(by_kind) > 1 else []
        return [("feedback records", f"{int(self.df['records'].sum()):,}")] + kinds

    def plot(self, ax=None):
        """Records per (stage, split), stacked by kind."""
        if ax is None:
            _, ax = views.new_figure(6.0, 3.0)
        groups = list(dict.fromkeys(zip(self.df["stage"], self.df["split"])))
        labels = [f"{s}\n{sp or '(untagged)'}" for s, sp in groups]
        bottom = np.zeros(len(groups))
        for kind in dict.fromkeys(self.df["kind"]):
            part = self.df[self.df["kind"] == kind].set_index(["stage", "split"])["records"]
            heights = np.array([float(part.get(g, 0)) for g in groups])
            ax.bar(range(len(groups)), heights, bottom=bottom, label=kind)
            bottom += heights
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
        ax.set_ylabel("records")
        ax.legend(fontsize=8)
        return ax

    def figures_html(self) -> Markup:
        return (
            views.figure_html(self.plot().figure, "feedback records per stage and split, stacked by kind") if len(self.df) else Markup("")
        )


@analysis("feedback.counts", result=FeedbackCountsResult, section="feedback", needs=Needs(data=("feedback",)), order=1)
def analyze_feedback_counts(run: Run) -> FeedbackCountsResult:
    """How many feedback records of each kind each stage has in each split, with the pairs they imply."""
    stage_order = {s.name: i for i, s in enumerate(run.stages())}
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in feedback_records(run):
        groups[(r["stage"], r["split"], r["kind"])].append(r)
    rows = [
        {
            "stage": stage,
            "split": split,
            "kind": kind,
            "records": len(records),
            "pairs": len(comparisons_from(records)),
            "prompts": len({r["prompt"] for r in records}),
            "labelers": len({r["labeler"] for r in records}),
        }
        for (stage, split, kind), records in groups.items()
    ]
    df = pd.DataFrame(rows, columns=list(FeedbackCountsResult.columns))
    order = df.assign(
        _stage=df["stage"].map(lambda s: stage_order.get(s, len(stage_order))),
        _split=df["split"].map({"train": 0, "eval": 1}).fillna(2),
        _kind=df["kind"].map(lambda k: KINDS.index(k) if k in KINDS else len(KINDS)),
    ).sort_values(["_stage", "stage", "_split", "_kind"], kind="stable")
    return FeedbackCountsResult(df=order[list(FeedbackCountsResult.columns)].reset_index(drop=True))


# --------------------------------------------------------------------------- labelers


class LabelersResult(Result):
    """One row per labeler, over every feedback record ("" is records without a labeler). Columns: labeler,
    records, pairs (comparisons implied by its records, `comparisons_from` per stage and split), gold_agreement
    (share of its pairs the oracle does not tie where it chose the oracle's favourite; NaN without an oracle),
    prefers_longer (share of its pairs of different lengths in words where it chose the longer), gold_prefers_longer
    (the same share for the oracle's choice on those pairs: how much of the length preference quality explains),
    agreement_with_others (share of other labelers' judgements of the same pairs that match its own; NaN when no
    pair was judged twice), shared_pairs (its pairs another labeler also judged).
    `meta["labeler_agreement"]` is the agreement between labelers over all pairs judged twice (the ceiling for a
    reward model's accuracy on their labels); `meta["labeler_agreement_by_stage"]` that of each reward stage's
    held-out pairs (the trainer's rm/labeler_agreement)."""

    columns = (
        "labeler",
        "records",
        "pairs",
        "gold_agreement",
        "prefers_longer",
        "gold_prefers_longer",
        "agreement_with_others",
        "shared_pairs",
    )
    heading = "Labelers"

    def headlines(self) -> list[tuple[str, str]]:
        ceiling = self.meta.get("labeler_agreement")  # None when no pair was judged twice (the cache stores NaN as null)
        return [(f"agreement between {len(self.df)} labelers", views.format_value(ceiling))]

    def plot(self, ax=None):
        """Per labeler: agreement with the oracle, with the other labelers, and preference for the longer answer."""
        if ax is None:
            _, ax = views.new_figure(max(4.0, 1.2 * len(self.df) + 2.5), 3.2)
        bars = [
            ("gold_agreement", "agrees with oracle"),
            ("agreement_with_others", "agrees with others"),
            ("prefers_longer", "prefers longer"),
        ]
        width = 0.8 / len(bars)
        x = np.arange(len(self.df))
        for i, (column, label) in enumerate(bars):
            ax.bar(x + (i - 1) * width, self.df[column].astype(float).fillna(0.0), width, label=label)
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
        ceiling = self.meta.get("labeler_agreement")
        if ceiling is not None and math.isfinite(ceiling):
            ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label=f"agreement between labelers {ceiling:.2f}")
        ax.set_xticks(x, [name or "(none)" for name in self.df["labeler"]], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of pairs")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(
            self.plot().figure, "per labeler: agreement with the oracle and the other labelers, preference for longer answers"
        )


# Why the defaults. min_pairs: below 30 pairs a share has a standard error above 0.09. agreement_*: human labelers
# of preference data agree on about 63-77% of pairs (InstructGPT: 73% between training labelers, Ouyang et al. 2022,
# sec. 5.1; summarization: 72-77%, Stiennon et al. 2020, appendix C.2), so below 0.65 the labels are noisier than
# usual human feedback; at 0.55 they are close to coin flips (0.5) and carry little preference to learn. longer_*:
# without a bias a labeler picks the longer answer about half the time; 0.65 is odds of almost 2:1, a bias a reward
# model trained on the labels learns and a policy then exploits by padding (Singhal et al. 2023, "A Long Way to
# Go"); at 0.8 length decides most of the labels. oracle_*: chance is 0.5 and the planted labelers agree with the
# oracle on 80-95% of held-out pairs; below 0.7 a labeler's labels are mostly not about what the oracle measures,
# below 0.6 they are within a few standard errors of chance.
@analysis("feedback.labelers", result=LabelersResult, section="feedback", needs=Needs(data=("feedback",)), order=2)
def analyze_labelers(
    run: Run,
    *,
    min_pairs: int = 30,
    agreement_warn: float = 0.65,
    agreement_flag: float = 0.55,
    longer_warn: float = 0.65,
    longer_flag: float = 0.8,
    oracle_warn: float = 0.7,
    oracle_flag: float = 0.6,
) -> LabelersResult:
    """Who gave the feedback, how they agree with each other and with the oracle, and whether they prefer longer answers.

    Settings (why these defaults: the comment above):
    min_pairs: a labeler is judged (longer answers, the oracle) only on at least this many pairs.
    agreement_warn, agreement_flag: warn / flag when labelers agree with each other on less than this share.
    longer_warn, longer_flag: warn / flag when a labeler chooses the longer answer more often than this.
    oracle_warn, oracle_flag: warn / flag when a labeler agrees with the oracle on less than this share.
    """
    records = feedback_records(run)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["stage"], r["split"])].append(r)
    pairs_by_group = {g: comparisons_from(rs) for g, rs in groups.items()}
    pairs = [p for ps in pairs_by_group.values() for p in ps]
    texts = list(dict.fromkeys(t for p in pairs for t in ((p["prompt"], p["chosen"]), (p["prompt"], p["rejected"]))))
    gold_scores = gold_of(run, texts)
    gold = None if gold_scores is None else dict(zip(texts, gold_scores.tolist()))
    profiles = labeler_profiles(pairs, gold)
    others = _agreement_with_others(pairs_by_group.values())
    counts = Counter(r["labeler"] for r in records)
    rows = []
    for name in sorted(counts, key=str):
        mine = [p for p in pairs if p["labeler"] == name]
        profile = profiles.get(name, {"pairs": 0, "prefers_longer": float("nan")})
        agreed, shared = others.get(name, (float("nan"), 0))
        rows.append(
            {
                "labeler": name,
                "records": counts[name],
                "pairs": profile["pairs"],
                "gold_agreement": profile.get("gold_agreement", float("nan")),
                "prefers_longer": profile["prefers_longer"],
                "gold_prefers_longer": _gold_prefers_longer(mine, gold),
                "agreement_with_others": agreed,
                "shared_pairs": shared,
            }
        )
    df = pd.DataFrame(rows, columns=list(LabelersResult.columns)).astype({"records": int, "pairs": int, "shared_pairs": int})
    by_stage = {
        s.name: labeler_agreement(pairs_by_group.get((s.name, "eval"), []))
        for s in run.stages("reward")
        if (s.name, "eval") in pairs_by_group
    }
    ceiling = labeler_agreement_over(pairs_by_group.values())
    meta = {"labeler_agreement": ceiling, "labeler_agreement_by_stage": by_stage, "has_oracle": gold is not None, "min_pairs": min_pairs}
    thresholds = {
        "agreement_warn": agreement_warn,
        "agreement_flag": agreement_flag,
        "longer_warn": longer_warn,
        "longer_flag": longer_flag,
        "oracle_warn": oracle_warn,
        "oracle_flag": oracle_flag,
    }
    return LabelersResult(df=df, meta=meta, verdicts=_labeler_verdicts(df, ceiling, min_pairs=min_pairs, **thresholds))


def labeler_agreement_over(groups) -> float:
    """`labeler_agreement` over several groups of pairs, a pair judged twice counted within its group only
    (two reward stages can hold the same pairs; their judgements are not compared across stages)."""
    agree: list[bool] = []
    for pairs in groups:
        for choices in _choices_by_pair(pairs).values():
            agree += [a == b for (_, a), (_, b) in itertools.combinations(choices, 2)]
    return float(np.mean(agree)) if agree else float("nan")


def _choices_by_pair(pairs: list[dict]) -> dict[tuple, list[tuple[str, str]]]:
    """(prompt, {a, b}) -> [(labeler, chosen)], the last judgement of each labeler (as `labeler_agreement` keeps it)."""
    by_pair: dict[tuple, dict[str, str]] = defaultdict(dict)
    for p in pairs:
        by_pair[(p["prompt"], frozenset((p["chosen"], p["rejected"])))][p["labeler"]] = p["chosen"]
    return {k: list(v.items()) for k, v in by_pair.items() if len(v) > 1}


def _agreement_with_others(groups) -> dict[str, tuple[float, int]]:
    """labeler -> (share of other labelers' judgements of its pairs that match its own, pairs shared with another)."""
    matches: dict[str, list[bool]] = defaultdict(list)
    shared: Counter = Counter()
    for pairs in groups:
        for choices in _choices_by_pair(pairs).values():
            for name, chosen in choices:
                shared[name] += 1
                matches[name] += [chosen == other for who, other in choices if who != name]
    return {name: (float(np.mean(m)), shared[name]) for name, m in matches.items()}


def _gold_prefers_longer(pairs: list[dict], gold: dict | None) -> float:
    """Among `pairs` of different lengths the oracle does not tie: the share where the oracle's favourite is the longer."""
    if gold is None:
        return float("nan")
    longer = []
    for p in pairs:
        n_chosen, n_rejected = len(p["chosen"].split()), len(p["rejected"].split())
        g_chosen, g_rejected = gold[(p["prompt"], p["chosen"])], gold[(p["prompt"], p["rejected"])]
        if n_chosen != n_rejected and g_chosen != g_rejected:
            longer.append((g_chosen > g_rejected) == (n_chosen > n_rejected))
    return float(np.mean(longer)) if longer else float("nan")


def _labeler_verdicts(
    df: pd.DataFrame,
    ceiling: float,
    *,
    min_pairs: int,
    agreement_warn: float,
    agreement_flag: float,
    longer_warn: float,
    longer_flag: float,
    oracle_warn: float,
    oracle_flag: float,
) -> tuple[Verdict, ...]:
    verdicts = []
    if math.isfinite(ceiling):
        verdicts.append(
            Verdict(
                "agreement between labelers",
                judge(ceiling, warn=agreement_warn, flag=agreement_flag, higher_is_worse=False),
                f"labelers agree on {ceiling:.1%} of the judgements of pairs judged by more than one",
                f"warn below {agreement_warn:.0%}, flag below {agreement_flag:.0%} (human labelers agree on 63-77%; 50% is chance)",
                value=ceiling,
            )
        )
    judged = df[df["pairs"] >= min_pairs]
    longer = judged.dropna(subset=["prefers_longer"])
    if len(longer):
        levels = [judge(v, warn=longer_warn, flag=longer_flag) for v in longer["prefers_longer"]]
        top = longer.loc[longer["prefers_longer"].idxmax()]
        named = [f"{n}: {v:.0%}" for n, v, lv in zip(longer["labeler"], longer["prefers_longer"], levels) if lv != "ok"]
        oracle = (
            f"; the oracle prefers the longer on {top['gold_prefers_longer']:.0%} of its pairs"
            if math.isfinite(top["gold_prefers_longer"])
            else ""
        )
        verdicts.append(
            Verdict(
                "labelers' preference for longer answers",
                worst(levels),
                f"highest: {top['labeler'] or '(none)'} chose the longer answer in {top['prefers_longer']:.0%} of pairs of different length{oracle}"
                + (f"; above the threshold: {', '.join(named)}" if named else ""),
                f"per labeler with at least {min_pairs} pairs: warn above {longer_warn:.0%}, flag above {longer_flag:.0%} (about 50% without a length bias)",
                value=float(top["prefers_longer"]),
            )
        )
    oracle_judged = judged.dropna(subset=["gold_agreement"])
    if len(oracle_judged):
        levels = [judge(v, warn=oracle_warn, flag=oracle_flag, higher_is_worse=False) for v in oracle_judged["gold_agreement"]]
        low = oracle_judged.loc[oracle_judged["gold_agreement"].idxmin()]
        named = [f"{n}: {v:.0%}" for n, v, lv in zip(oracle_judged["labeler"], oracle_judged["gold_agreement"], levels) if lv != "ok"]
        verdicts.append(
            Verdict(
                "labelers' agreement with the oracle",
                worst(levels),
                f"lowest: {low['labeler'] or '(none)'} agrees with the oracle on {low['gold_agreement']:.0%} of the pairs it does not tie"
                + (f"; below the threshold: {', '.join(named)}" if named else ""),
                f"per labeler with at least {min_pairs} pairs: warn below {oracle_warn:.0%}, flag below {oracle_flag:.0%} (50% is chance)",
                value=float(low["gold_agreement"]),
            )
        )
    return tuple(verdicts)


# --------------------------------------------------------------------------- disputed labels


class DisputedFeedbackResult(Result):
    """The held-out labels a reward stage's final reward model disputes most, strongest first (at most `meta["top"]`,
    20 by default; only pairs it scores the other way round). Columns: labeler, prompt, chosen, rejected, reward_chosen,
    reward_rejected, margin (reward of the rejected minus reward of the chosen: > 0), gold_chosen, gold_rejected
    (the oracle's scores; NaN without one), oracle_sides_with ("model" when the oracle also prefers the rejected
    side: a likely mislabel; "label", "tie", or "" without an oracle)."""

    columns = (
        "labeler",
        "prompt",
        "chosen",
        "rejected",
        "reward_chosen",
        "reward_rejected",
        "margin",
        "gold_chosen",
        "gold_rejected",
        "oracle_sides_with",
    )
    heading = "Disputed held-out labels"

    def plot(self, ax=None):
        """The margins of the listed pairs, coloured by which side the oracle takes."""
        if ax is None:
            _, ax = views.new_figure(6.0, max(2.0, 0.22 * len(self.df) + 1.0))
        colours = {"model": "tab:red", "label": "tab:blue", "tie": "tab:grey", "": "tab:grey"}
        y = np.arange(len(self.df))[::-1]
        ax.barh(y, self.df["margin"], color=[colours.get(s, "tab:grey") for s in self.df["oracle_sides_with"]])
        ax.set_yticks(y, [f"{i + 1}. {name or '(none)'}" for i, name in enumerate(self.df["labeler"])], fontsize=7)
        ax.set_xlabel("reward margin for the rejected side (red: the oracle agrees with the model)")
        return ax

    def table_html(self) -> Markup:
        caption = (
            f"Held-out pairs of stage {self.meta.get('stage')} where checkpoint {self.meta.get('tag')} most prefers the rejected completion; "
            '"model" in the last column: the oracle agrees with the reward model, so the label is likely wrong'
        )
        return views.table(self.df, caption=caption, max_rows=None)


@analysis(
    "feedback.disputed",
    result=DisputedFeedbackResult,
    section="feedback",
    needs=Needs(stage_kind="reward", checkpoints=True, data=("feedback",), requires=missing_heldout),
    order=3,
)
def analyze_disputed_feedback(run: Run, stage: str, *, top: int = 20, score_chunk: int = 128) -> DisputedFeedbackResult:
    """The held-out labels of reward stage `stage` that its final reward model most strongly disagrees with.

    Settings:
    top: disputed labels listed (the strongest disagreements first).
    score_chunk: texts per call of the reward model (a multiple of its batch of 64 reproduces the trainer's batches).
    """
    tag = FINAL_TAG if any(c.tag == FINAL_TAG for c in run.checkpoints(stage)) else run.checkpoints(stage)[-1].tag
    data = heldout(run, stage)
    rewards = checkpoint_rewards(run, stage, tag, data, chunk=score_chunk)
    r_chosen, r_rejected = rewards[data.chosen], rewards[data.rejected]
    disputed = disputed_records(data.pairs, r_chosen, r_rejected, top=top)
    index = {text: i for i, text in enumerate(data.texts)}
    rows = []
    for record in disputed:
        i, j = index[(record["prompt"], record["chosen"])], index[(record["prompt"], record["rejected"])]
        g_chosen, g_rejected = (float(data.gold[i]), float(data.gold[j])) if data.gold is not None else (float("nan"), float("nan"))
        rows.append(
            {
                "labeler": record["labeler"],
                "prompt": record["prompt"],
                "chosen": record["chosen"],
                "rejected": record["rejected"],
                "reward_chosen": float(rewards[i]),
                "reward_rejected": float(rewards[j]),
                "margin": record["model_margin_for_rejected"],
                "gold_chosen": g_chosen,
                "gold_rejected": g_rejected,
                "oracle_sides_with": _oracle_side(g_chosen, g_rejected),
            }
        )
    df = pd.DataFrame(rows, columns=list(DisputedFeedbackResult.columns)).astype({"labeler": str})
    meta = {
        "stage": stage,
        "tag": tag,
        "top": top,
        "heldout_pairs": len(data.pairs),
        "disputed_pairs": int(np.sum(r_rejected > r_chosen)),
        "oracle_sides_with_model": int((df["oracle_sides_with"] == "model").sum()),
    }
    return DisputedFeedbackResult(df=df, meta=meta)


def _oracle_side(g_chosen: float, g_rejected: float) -> str:
    if math.isnan(g_chosen) or math.isnan(g_rejected):
        return ""
    if g_chosen == g_rejected:
        return "tie"
    return "model" if g_rejected > g_chosen else "label"
