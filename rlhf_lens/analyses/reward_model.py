"""Reward model: how well each reward stage's checkpoints order its held-out feedback, how calibrated and how
length-biased the final one is, re-computed from the files (the checkpoints, read as the policy stage reads
them, scoring the stage's held-out records in data/feedback.jsonl), so the figures can be checked against the
trainer's rm/ metrics in each checkpoint's meta.json."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses._heldout import METRIC_KEYS, checkpoint_rewards, heldout, missing_heldout, reward_figures
from rlhf_lens.analyses._reference import final_tag
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict, judge
from rlhf_lens.runs import Run
from rlhf_lens.tasks.agreement import calibration, linear_correlation, sigmoid

register_section(
    "reward_model",
    "Reward model",
    order=40,
    intro="Each reward stage's checkpoints scored again on the stage's held-out feedback: agreement with the labels and "
    "with the oracle against the labelers' own agreement (the ceiling), calibration of P(chosen preferred), and how "
    "much the reward follows completion length.",
)

NEEDS = Needs(stage_kind="reward", checkpoints=True, data=("feedback",), requires=missing_heldout)

CURVE_METRICS = ("accuracy", "accuracy_gold", "label_accuracy_gold", "spearman_gold")
"""Figures on the agreement scale, drawn against the ceiling."""


def _number(meta, key: str) -> float:
    """A figure of `meta` as a float: NaN when missing, or None (the cache stores NaN as null)."""
    value = meta.get(key)
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------- checkpoints


class RewardCheckpointsResult(Result):
    """Held-out figures of each checkpoint of a reward stage, re-computed from the files (the trainer's rm/
    metrics under shorter names). Columns: tag, step, accuracy (agreement with the held-out labels; ties count
    one half), accuracy_gold (agreement with the oracle's ordering of the same pairs), labeler_agreement (the
    labelers' agreement with each other on pairs judged twice: the ceiling for accuracy), label_accuracy_gold (the
    labels' own agreement with the oracle), spearman_gold (rank correlation of reward and oracle over the held-out
    texts), ece (calibration error of P(chosen preferred)), length_corr (Pearson correlation of reward and length
    in words), margin_mean (mean reward of chosen minus rejected), pairs, texts. Gold columns are NaN without an
    oracle. `meta["trainer"]` holds each checkpoint's logged figures, `meta["max_abs_diff"]` the largest
    difference from them."""

    columns = (
        "tag",
        "step",
        "accuracy",
        "accuracy_gold",
        "labeler_agreement",
        "label_accuracy_gold",
        "spearman_gold",
        "ece",
        "length_corr",
        "margin_mean",
        "pairs",
        "texts",
    )
    heading = "Reward model over checkpoints"

    def headlines(self) -> list[tuple[str, str]]:
        last = self.df.iloc[-1]
        return [
            ("reward model: held-out accuracy", views.format_value(float(last["accuracy"]))),
            ("reward model: accuracy vs oracle", views.format_value(float(last["accuracy_gold"]))),
        ]

    def plot(self, ax=None):
        """Agreement figures over checkpoint steps (bars for a single checkpoint), the ceiling dashed."""
        if ax is None:
            _, ax = views.new_figure(6.0, 3.2)
        metrics = [m for m in CURVE_METRICS if self.df[m].notna().any()]
        if len(self.df) == 1:
            row = self.df.iloc[0]
            ax.bar(range(len(metrics)), [float(row[m]) for m in metrics], color=[f"C{i}" for i in range(len(metrics))])
            ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics], fontsize=8)
            ax.set_title(f"checkpoint {row['tag']} (step {row['step']})", fontsize=9)
        else:
            for i, m in enumerate(metrics):
                ax.plot(self.df["step"], self.df[m], marker="o", color=f"C{i}", label=m.replace("_", " "))
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        ceiling = float(self.df["labeler_agreement"].iloc[-1])
        if math.isfinite(ceiling):
            ax.axhline(ceiling, color="black", linestyle="--", linewidth=1, label="agreement between labelers")
            ax.annotate(f"labeler agreement {ceiling:.3f}", (0.01, ceiling), xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0, 1.02)
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(
            self.plot().figure, f"held-out agreement of each checkpoint of {self.meta.get('stage')} against the labelers' agreement"
        )


# Why the defaults. reproduced_*: scoring the same texts in the same batches reproduces the trainer's rm/ figures to
# about 1e-9; a share moves by 1/pairs (1.2e-4 on 8,640 pairs) per flipped pair, so 1e-3 allows a few pairs flipped
# by float noise on other hardware, and beyond 0.02 the checkpoint or the feedback is not what was evaluated.
# gap_*: the labelers' agreement with each other is the ceiling (a model cannot be expected to agree with one labeler
# more than labelers agree among themselves). Ten points short, the model has learned clearly less than the labels
# hold (more feedback, epochs or capacity would help); twenty points short, at typical ceilings of 0.7-0.8, it is
# close to chance (0.5). score_chunk: a multiple of the scorers' batch of 64 gives the trainer's own batches (and
# padding), so the figures match its meta.json to the last digits.
@analysis("reward_model.checkpoints", result=RewardCheckpointsResult, section="reward_model", needs=NEEDS, order=1)
def analyze_reward_checkpoints(
    run: Run,
    stage: str,
    *,
    reproduced_warn: float = 1e-3,
    reproduced_flag: float = 0.02,
    gap_warn: float = 0.1,
    gap_flag: float = 0.2,
    score_chunk: int = 128,
) -> RewardCheckpointsResult:
    """Every checkpoint of reward stage `stage` scored on its held-out feedback: the trainer's rm/ figures again.

    Settings (why these defaults: the comment above):
    reproduced_warn, reproduced_flag: warn / flag when a figure differs from the trainer's logged one by more.
    gap_warn, gap_flag: warn / flag when the final accuracy is more than this below the labelers' agreement.
    score_chunk: texts per call of the reward model (a multiple of 64 reproduces the trainer's batches).
    """
    data = heldout(run, stage)
    rows, trainer, diffs = [], {}, []
    for cp in run.checkpoints(stage):
        figures = reward_figures(checkpoint_rewards(run, stage, cp.tag, data, chunk=score_chunk), data)
        rows.append({"tag": cp.tag, "step": cp.step, **figures, "pairs": len(data.pairs), "texts": len(data.texts)})
        logged = {name: cp.meta.get("metrics", {}).get(key) for name, key in METRIC_KEYS.items()}
        trainer[cp.tag] = {k: v for k, v in logged.items() if v is not None}
        diffs += [abs(figures[k] - v) for k, v in trainer[cp.tag].items() if math.isfinite(figures[k]) and math.isfinite(v)]
    df = pd.DataFrame(rows, columns=list(RewardCheckpointsResult.columns))
    max_diff = max(diffs) if diffs else float("nan")
    meta = {"stage": stage, "reward_kind": run.checkpoint(stage, final_tag(run, stage)).meta.get("reward_kind", ""), "trainer": trainer}
    meta["max_abs_diff"] = max_diff
    thresholds = {"reproduced_warn": reproduced_warn, "reproduced_flag": reproduced_flag, "gap_warn": gap_warn, "gap_flag": gap_flag}
    return RewardCheckpointsResult(df=df, meta=meta, verdicts=_checkpoint_verdicts(df, max_diff, len(diffs), **thresholds))


def _checkpoint_verdicts(
    df: pd.DataFrame, max_diff: float, compared: int, *, reproduced_warn: float, reproduced_flag: float, gap_warn: float, gap_flag: float
) -> tuple[Verdict, ...]:
    verdicts = []
    if compared:
        verdicts.append(
            Verdict(
                "figures reproduce the trainer's",
                judge(max_diff, warn=reproduced_warn, flag=reproduced_flag),
                f"largest difference from the rm/ metrics in the checkpoints' meta.json: {max_diff:.2g} ({compared} figures compared)",
                f"warn above {reproduced_warn:g}, flag above {reproduced_flag:g} (a flipped pair moves a share by 1/pairs)",
                value=max_diff,
            )
        )
    last = df.iloc[-1]
    ceiling, accuracy = float(last["labeler_agreement"]), float(last["accuracy"])
    if math.isfinite(ceiling):
        gap = ceiling - accuracy
        verdicts.append(
            Verdict(
                "held-out accuracy against the labelers' agreement",
                judge(gap, warn=gap_warn, flag=gap_flag),
                f"checkpoint {last['tag']}: accuracy {accuracy:.3f}, labelers agree on {ceiling:.3f}: {gap:+.3f} short of the ceiling",
                f"warn when more than {gap_warn:g} below the ceiling, flag when more than {gap_flag:g} below",
                value=gap,
            )
        )
    return tuple(verdicts)


# --------------------------------------------------------------------------- calibration


class RewardCalibrationResult(Result):
    """Reliability diagram of the final checkpoint of a reward stage on its held-out pairs: P(chosen preferred) =
    sigmoid(r_chosen - r_rejected), each pair also mirrored, in `meta["n_bins"]` equal bins (10 by default).
    Columns: bin_low, bin_high, p_mean (mean predicted probability in the bin), frequency (share where the
    predicted side is the labelled winner), count (predictions in the bin; empty bins are left out). `meta["ece"]`
    is the expected calibration error (the trainer's rm/ece)."""

    columns = ("bin_low", "bin_high", "p_mean", "frequency", "count")
    heading = "Reward model calibration"

    def headlines(self) -> list[tuple[str, str]]:
        return [("calibration error (ECE)", views.format_value(_number(self.meta, "ece")))]

    def plot(self, ax=None):
        """Observed frequency against predicted probability, the diagonal dashed; marker area follows the count."""
        if ax is None:
            _, ax = views.new_figure(4.0, 4.0)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        sizes = 20 + 200 * self.df["count"] / max(1, self.df["count"].max())
        ax.plot(self.df["p_mean"], self.df["frequency"], color="C0", linewidth=1)
        ax.scatter(self.df["p_mean"], self.df["frequency"], s=sizes, color="C0", zorder=3, label=f"checkpoint {self.meta.get('tag')}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted P(chosen preferred)")
        ax.set_ylabel("observed frequency")
        ax.set_title(f"ECE {_number(self.meta, 'ece'):.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, f"reliability diagram of the reward model of {self.meta.get('stage')}")


# Why the defaults. ece_*: Bradley-Terry reward models trained on enough comparisons are calibrated to within a few
# points (Bai et al. 2022, fig. 9): above 0.05 the stated probabilities are visibly off; above 0.15 they are not
# usable as confidences (e.g. to weight or filter pairs). bins: the trainer's rm/ece uses 10.
@analysis("reward_model.calibration", result=RewardCalibrationResult, section="reward_model", needs=NEEDS, order=2)
def analyze_reward_calibration(
    run: Run, stage: str, *, bins: int = 10, ece_warn: float = 0.05, ece_flag: float = 0.15, score_chunk: int = 128
) -> RewardCalibrationResult:
    """The reliability diagram of the final checkpoint of reward stage `stage` on its held-out pairs.

    Settings (why these defaults: the comment above):
    bins: equal-width probability bins of the diagram and of the ECE (the trainer's rm/ece uses 10).
    ece_warn, ece_flag: warn / flag above this expected calibration error.
    score_chunk: texts per call of the reward model (a multiple of 64 reproduces the trainer's batches).
    """
    if bins < 1:
        raise ValueError(f"setting reward_model.calibration.bins must be at least 1, got {bins}")
    tag = final_tag(run, stage)
    data = heldout(run, stage)
    rewards = checkpoint_rewards(run, stage, tag, data, chunk=score_chunk)
    ece, filled = calibration(sigmoid(rewards[data.chosen] - rewards[data.rejected]), n_bins=bins)
    edges = np.linspace(0.0, 1.0, bins + 1)  # calibration's bins
    rows = []
    for b in filled:
        index = int(np.clip(np.digitize(b["p_mean"], edges[1:-1]), 0, bins - 1))
        rows.append({"bin_low": float(edges[index]), "bin_high": float(edges[index + 1]), **b})
    df = pd.DataFrame(rows, columns=list(RewardCalibrationResult.columns)).astype({"count": int})
    verdict = Verdict(
        "reward model calibration",
        judge(ece, warn=ece_warn, flag=ece_flag),
        f"ECE {ece:.3f} over {len(data.pairs):,} held-out pairs (checkpoint {tag})",
        f"warn above {ece_warn:g}, flag above {ece_flag:g}",
        value=ece,
    )
    return RewardCalibrationResult(
        df=df, meta={"stage": stage, "tag": tag, "ece": ece, "pairs": len(data.pairs), "n_bins": bins}, verdicts=(verdict,)
    )


# --------------------------------------------------------------------------- length


class RewardLengthResult(Result):
    """Reward against completion length for every distinct held-out text of a reward stage, under its final
    checkpoint. Columns: prompt, completion, length (words, as the trainer counts them), reward (centred, as the
    policy stage sees it), gold (the oracle's score; NaN without one). `meta["length_corr"]` is the Pearson
    correlation of reward and length (the trainer's rm/length_corr), `meta["gold_length_corr"]` the oracle's."""

    columns = ("prompt", "completion", "length", "reward", "gold")
    heading = "Reward and length"

    def headlines(self) -> list[tuple[str, str]]:
        return [("reward-length correlation", views.format_value(_number(self.meta, "length_corr")))]

    def plot(self, ax=None):
        """Reward against length in words, each text coloured by the oracle's score."""
        if ax is None:
            _, ax = views.new_figure(6.0, 3.6)
        jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(self.df))  # lengths are integers: spread the columns
        has_gold = self.df["gold"].notna().any()
        points = ax.scatter(
            self.df["length"] + jitter,
            self.df["reward"],
            c=self.df["gold"] if has_gold else "C0",
            cmap="coolwarm" if has_gold else None,
            s=8,
            alpha=0.7,
            linewidths=0,
        )
        if has_gold:
            ax.figure.colorbar(points, ax=ax, label="oracle score")
        corr = _number(self.meta, "length_corr")
        ax.set_xlabel("completion length (words)")
        ax.set_ylabel("reward")
        ax.set_title(f"reward-length correlation {corr:.3f}", fontsize=9)
        return ax

    def figures_html(self) -> Markup:
        return views.figure_html(self.plot().figure, f"reward against completion length, held-out texts of {self.meta.get('stage')}")


# Why the defaults. length_*: bound the part of the reward's length preference quality does not explain. A policy
# optimising the reward follows its gradient in any direction that pays; a correlation of 0.3 (length alone
# explaining 9% of the reward's variance beyond quality) is enough for RLHF to grow answers (Singhal et al. 2023,
# "A Long Way to Go"); 0.15 is worth watching.
@analysis("reward_model.length", result=RewardLengthResult, section="reward_model", needs=NEEDS, order=3)
def analyze_reward_length(
    run: Run, stage: str, *, length_warn: float = 0.15, length_flag: float = 0.3, score_chunk: int = 128
) -> RewardLengthResult:
    """Reward, length and oracle score of every held-out text of reward stage `stage`, under its final checkpoint.

    Settings (why these defaults: the comment above):
    length_warn, length_flag: warn / flag above this |reward-length correlation minus the oracle's| (the raw one
    without an oracle).
    score_chunk: texts per call of the reward model (a multiple of 64 reproduces the trainer's batches).
    """
    tag = final_tag(run, stage)
    data = heldout(run, stage)
    rewards = checkpoint_rewards(run, stage, tag, data, chunk=score_chunk)
    lengths = data.lengths
    gold = data.gold if data.gold is not None else np.full(len(data.texts), np.nan)
    df = pd.DataFrame(
        {
            "prompt": [p for p, _ in data.texts],
            "completion": [c for _, c in data.texts],
            "length": lengths.astype(int),
            "reward": rewards.astype(float),
            "gold": gold.astype(float),
        },
        columns=list(RewardLengthResult.columns),
    )
    length_corr = linear_correlation(rewards, lengths)
    gold_corr = linear_correlation(data.gold, lengths) if data.gold is not None else float("nan")
    meta = {"stage": stage, "tag": tag, "length_corr": length_corr, "gold_length_corr": gold_corr, "texts": len(df)}
    return RewardLengthResult(df=df, meta=meta, verdicts=(_length_verdict(length_corr, gold_corr, warn=length_warn, flag=length_flag),))


def _length_verdict(length_corr: float, gold_corr: float, *, warn: float, flag: float) -> Verdict:
    if math.isfinite(gold_corr):
        excess = abs(length_corr - gold_corr)
        evidence = (
            f"reward-length correlation {length_corr:.3f}, the oracle's {gold_corr:.3f}: "
            f"{excess:.3f} of the reward's length preference is not explained by quality"
        )
        rule = "|reward-length minus oracle-length correlation|"
    else:
        excess = abs(length_corr)
        evidence = f"reward-length correlation {length_corr:.3f} (no oracle to compare with)"
        rule = "|reward-length correlation|"
    return Verdict(
        "reward model's length bias",
        judge(excess, warn=warn, flag=flag),
        evidence,
        f"{rule}: warn above {warn:g}, flag above {flag:g}",
        value=excess,
    )
