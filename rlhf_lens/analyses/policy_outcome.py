"""Policy outcome: did a policy stage improve the gold reward, not only the proxy it optimised, and at what cost?

Read from the evaluation samples a policy stage logs (`Run.eval_rollouts`): every evaluation samples one
completion per eval prompt with the same seeds, step 0 being the starting (SFT) policy, so the starting and
the final policy are compared prompt by prompt (paired differences), and every evaluation step is a point of
a trend. Training rollout shards are not used: their per-step means are already the logged metrics of the
training-curves section, and their proxy is rescaled and penalised for training.
"""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

import numpy as np
import pandas as pd
from markupsafe import Markup

from rlhf_lens import views
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.core.result import Result
from rlhf_lens.analyses.core.verdict import Verdict, judge
from rlhf_lens.runs import Run

register_section(
    "policy",
    "Policy outcome",
    order=50,
    intro="Did the policy get better by the gold reward, not only by the proxy reward it was trained on, and at what "
    "cost: KL to the reference, longer answers, answers that no longer end? Read from the evaluation samples each "
    "policy stage logs: one completion per eval prompt, with the same seeds at every evaluation (step 0 is the "
    "starting policy), so the starting and the final policy are compared prompt by prompt.",
)

METRICS: dict[str, str] = {"gold": "gold_reward", "proxy": "reward", "kl": "seq_kl", "length": "length", "eos_rate": "finished"}
"""Our metric name -> the rollout column it is the mean of (eos_rate: the share of completions that reached EOS)."""

LABELS: dict[str, str] = {
    "gold": "gold reward",
    "proxy": "proxy reward",
    "kl": "KL to reference (nats)",
    "length": "length (tokens)",
    "eos_rate": "EOS rate",
}


# --------------------------------------------------------------------------- results


class PolicyOutcomeResult(Result):
    """The starting policy (first evaluation, step 0) beside the final one (last evaluation) on the same eval
    prompts and seeds. Columns: policy ("start", "final", or "change": the paired difference final - start over
    the prompts both evaluated), step (of the evaluation; the final step for "change"), metric ("gold", "proxy",
    "kl", "length", "eos_rate"; gold or proxy are left out when the stage has none), mean, sem (standard error
    of the mean, sample std with ddof=1 over sqrt(n)), n (samples, or pairs for "change").
    `meta`: stage, start_step, final_step, z_gold, z_proxy (paired z of the changes), and the verdicts' thresholds
    (z_significant, eos_drop_warn, eos_drop_flag, length_ratio_warn, length_ratio_flag: the analysis's settings)."""

    columns = ("policy", "step", "metric", "mean", "sem", "n")
    heading = "Starting vs final policy"

    def value(self, policy: str, metric: str, column: str = "mean") -> float:
        """One figure of the table, e.g. `value("final", "gold", "sem")`; NaN when the metric is absent."""
        part = self.df[(self.df["policy"] == policy) & (self.df["metric"] == metric)]
        return float(part[column].iloc[0]) if len(part) else math.nan

    def metrics(self) -> list[str]:
        return [m for m in METRICS if m in set(self.df["metric"])]

    def headlines(self) -> list[tuple[str, str]]:
        out = []
        for metric in ("gold", "proxy"):
            if metric in self.metrics():
                start, final = self.value("start", metric), self.value("final", metric)
                out.append(
                    (
                        f"{LABELS[metric]}, start → final",
                        f"{_pm(start, self.value('start', metric, 'sem'))} → {_pm(final, self.value('final', metric, 'sem'))}",
                    )
                )
                change, sem = self.value("change", metric), self.value("change", metric, "sem")
                out.append((f"{metric} change (paired)", f"{_signed(change)} ± {sem:.2g} (z = {_z(change, sem):.1f})"))
        out.append(("KL to reference, final", f"{self.value('final', 'kl'):.3g} nats"))
        return out

    def plot(self, ax=None):
        """With `ax`: gold and proxy (start and final, ± SEM) on it. Without: one small panel per metric."""
        if ax is not None:
            for metric in [m for m in ("gold", "proxy") if m in self.metrics()]:
                self._draw(ax, metric, label=LABELS[metric])
            ax.legend(fontsize=7)
            return ax
        metrics = self.metrics()
        figure, axes = views.new_figure(2.4 * len(metrics), 2.4, ncols=len(metrics))
        axes = np.atleast_1d(axes)
        for ax_, metric in zip(axes.flat, metrics):
            self._draw(ax_, metric)
            change, sem = self.value("change", metric), self.value("change", metric, "sem")
            ax_.set_title(f"{LABELS[metric]}\nchange {_signed(change)} ± {sem:.2g}", fontsize=8)
        figure.suptitle(self.title, fontsize=9)
        figure.tight_layout()
        return axes

    def _draw(self, ax, metric: str, label: str | None = None) -> None:
        means = [self.value(p, metric) for p in ("start", "final")]
        sems = [self.value(p, metric, "sem") for p in ("start", "final")]
        ax.errorbar([0, 1], means, yerr=np.nan_to_num(sems), marker="o", capsize=3, label=label)
        ax.set_xticks([0, 1], [f"start\n(step {self.meta.get('start_step')})", f"final\n(step {self.meta.get('final_step')})"])
        ax.set_xlim(-0.4, 1.4)
        ax.tick_params(labelsize=7)

    def figures_html(self) -> Markup:
        axes = self.plot()
        return views.figure_html(axes.flat[0].figure, f"starting vs final policy of stage {self.meta.get('stage')}, mean ± SEM")

    def table_html(self) -> Markup:
        return views.table(self.df, caption="Mean ± SEM per policy; change = paired difference final − start", max_rows=None)


class PolicyTrendsResult(Result):
    """Every evaluation of the stage. Columns: step (of the evaluation; 0 = the starting policy), metric ("gold",
    "proxy", "kl", "length", "eos_rate"), mean, sem (ddof=1 std over sqrt(n)), n (samples).
    `meta`: stage, steps, z_significant (the peak verdict's threshold)."""

    columns = ("step", "metric", "mean", "sem", "n")
    heading = "Policy over evaluations"

    def metrics(self) -> list[str]:
        return [m for m in METRICS if m in set(self.df["metric"])]

    def plot(self, ax=None, *, metrics: list[str] | None = None):
        """With `ax`: the chosen metrics (default gold and proxy) over steps, SEM bands. Without: small multiples,
        one panel per metric; returns the axes."""
        if ax is not None:
            for metric in metrics or [m for m in ("gold", "proxy") if m in self.metrics()]:
                self._draw(ax, metric, label=LABELS[metric])
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
            return ax
        metrics = metrics or self.metrics()
        figure, axes = views.new_figure(2.4 * len(metrics), 2.2, ncols=len(metrics))
        axes = np.atleast_1d(axes)
        for ax_, metric in zip(axes.flat, metrics):
            self._draw(ax_, metric)
            ax_.set_title(LABELS[metric], fontsize=8)
            ax_.set_xlabel("step", fontsize=7)
        figure.suptitle(f"{self.title} (mean ± SEM)", fontsize=9)
        figure.tight_layout()
        return axes

    def _draw(self, ax, metric: str, label: str | None = None) -> None:
        part = self.df[self.df["metric"] == metric].sort_values("step")
        steps, mean, sem = part["step"].to_numpy(), part["mean"].to_numpy(float), np.nan_to_num(part["sem"].to_numpy(float))
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, linewidth=1.2, label=label)
        ax.fill_between(steps, mean - sem, mean + sem, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.tick_params(labelsize=7)

    def figures_html(self) -> Markup:
        axes = self.plot()
        return views.figure_html(axes.flat[0].figure, f"evaluations of stage {self.meta.get('stage')} over steps, mean ± SEM")

    def table_html(self) -> Markup:
        wide = self.df.pivot(index="step", columns="metric", values=["mean", "sem"])
        rows = pd.DataFrame({"step": wide.index})
        for metric in self.metrics():
            rows[metric] = [_pm(m, s) for m, s in zip(wide[("mean", metric)], wide[("sem", metric)])]
        rows["n"] = self.df.groupby("step")["n"].max().to_numpy()
        return views.table(rows, caption="Mean ± SEM at each evaluation (all rows are in the result's DataFrame)", max_rows=None)


class SampleCompletionsResult(Result):
    """A few eval prompts, each with the starting and the final policy's completion for the same seed. Columns:
    sample (1, 2, ... in display order), reason (why the prompt was chosen), prompt_id, prompt, policy ("start" or
    "final"), step, completion, gold, proxy, seq_kl, length, finished, tokens (the completion's tokens, decoded
    one by one), kl_per_token (each token's log pi - log pi_ref; same length as tokens).
    `meta`: stage, start_step, final_step, chosen_by ("gold", "proxy" or "random"), n, seed."""

    columns = (
        "sample",
        "reason",
        "prompt_id",
        "prompt",
        "policy",
        "step",
        "completion",
        "gold",
        "proxy",
        "seq_kl",
        "length",
        "finished",
        "tokens",
        "kl_per_token",
    )
    heading = "Sample completions, starting vs final policy"

    @property
    def kl_scale(self) -> float:
        """The |KL| given the strongest colour in every heatmap: the 95th percentile of |per-token KL| over the
        final completions shown, so one extreme token does not wash the others out."""
        final = self.df[self.df["policy"] == "final"]
        values = np.abs(np.concatenate([np.asarray(v, dtype=float) for v in final["kl_per_token"]] or [np.zeros(0)]))
        values = values[np.isfinite(values)]
        return float(np.quantile(values, 0.95)) if len(values) else 0.0

    def plot(self, ax=None):
        """Per-token KL along each final completion shown (one line per sample)."""
        if ax is None:
            _, ax = views.new_figure(6.0, 2.6)
        for record in self.df[self.df["policy"] == "final"].itertuples():
            ax.plot(np.asarray(record.kl_per_token, dtype=float), linewidth=1, label=f"sample {record.sample}")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlabel("token position")
        ax.set_ylabel("KL per token (nats)")
        ax.legend(fontsize=6, ncols=2)
        return ax

    def figures_html(self) -> Markup:
        scale = self.kl_scale
        parts = views.render(SCALE_NOTE, scale=views.format_value(scale))
        for sample, part in self.df.groupby("sample", sort=True):
            sides = {record["policy"]: record for record in part.to_dict("records")}
            if "start" not in sides or "final" not in sides:
                continue
            start, final = sides["start"], sides["final"]
            parts += views.render(
                SAMPLE,
                sample=sample,
                reason=start["reason"],
                prompt_id=start["prompt_id"],
                prompt=start["prompt"],
                sides=[
                    (f"{p} policy (step {r['step']})", _facts(r), _heatmap(r, scale)) for p, r in (("starting", start), ("final", final))
                ],
            )
        return parts

    def table_html(self) -> Markup:
        shown = ["sample", "reason", "prompt_id", "policy", "step", "gold", "proxy", "seq_kl", "length", "finished"]
        return views.table(self.df, columns=shown, max_rows=None)


SCALE_NOTE = """<p class="note">Each token is coloured by its KL to the reference, log π − log π_ref (red: the policy
made it likelier, blue: less likely); hover a token for its value. One scale for all samples: |KL| ≥ {{ scale }}
nats gets the strongest colour.</p>"""

SAMPLE = """<h4>{{ sample }}. {{ reason }}: {{ prompt_id }}</h4>
<p><span class="muted">prompt:</span> <span class="tokens">{{ prompt }}</span></p>
<div class="side">{% for title, facts, heatmap in sides %}<div><strong>{{ title }}</strong>{{ facts }}{{ heatmap }}</div>{% endfor %}</div>"""


def _facts(record: dict) -> Markup:
    return views.key_values(
        [
            ("gold", record["gold"]),
            ("proxy", record["proxy"]),
            ("seq KL", record["seq_kl"]),
            ("length", int(record["length"])),
            ("finished", bool(record["finished"])),
        ]
    )


def _heatmap(record: dict, scale: float) -> Markup:
    tokens = [str(t) for t in record["tokens"]]
    values = [float(v) for v in record["kl_per_token"]]
    return views.token_heatmap(tokens, values, label="KL", scale=scale)


# --------------------------------------------------------------------------- analyses


@analysis("policy.outcome", result=PolicyOutcomeResult, section="policy", needs=Needs(stage_kind="policy", eval_rollouts=True), order=1)
def analyze_policy_outcome(
    run: Run,
    stage: str,
    *,
    z_significant: float = 2.0,
    eos_drop_warn: float = 10.0,
    eos_drop_flag: float = 30.0,
    length_ratio_warn: float = 1.5,
    length_ratio_flag: float = 2.0,
) -> PolicyOutcomeResult:
    """Gold and proxy reward, KL, length and EOS rate of the starting policy (first evaluation) beside the final
    one (last evaluation), each with its SEM, and the paired change over the prompts both evaluated.

    Settings:
        z_significant: |paired z| at which a gold change counts as real (about 95% two-sided, normal approximation).
        eos_drop_warn: fall of the EOS rate, in percentage points, that warns.
        eos_drop_flag: fall of the EOS rate, in percentage points, that flags.
        length_ratio_warn: final/start mean-length ratio (or its inverse) that warns.
        length_ratio_flag: final/start mean-length ratio (or its inverse) that flags.
    """
    samples = eval_samples(run, stage)
    start_step, final_step = int(samples["step"].min()), int(samples["step"].max())
    start, final = _at(samples, start_step), _at(samples, final_step)
    keys = start.index.intersection(final.index, sort=False)
    rows = []
    for metric in present_metrics(samples):
        for policy, part, step in (("start", start, start_step), ("final", final, final_step)):
            rows.append({"policy": policy, "step": step, "metric": metric, **_stats(part[metric])})
        change = final.loc[keys, metric].to_numpy(float) - start.loc[keys, metric].to_numpy(float)
        rows.append({"policy": "change", "step": final_step, "metric": metric, **_stats(change)})
    df = pd.DataFrame(rows, columns=list(PolicyOutcomeResult.columns)).astype({"step": int, "n": int, "mean": float, "sem": float})
    result = PolicyOutcomeResult(df=df, meta={"stage": stage, "start_step": start_step, "final_step": final_step})
    z = {m: _z(result.value("change", m), result.value("change", m, "sem")) for m in ("gold", "proxy")}
    thresholds = {
        "z_significant": z_significant,
        "eos_drop_warn": eos_drop_warn,
        "eos_drop_flag": eos_drop_flag,
        "length_ratio_warn": length_ratio_warn,
        "length_ratio_flag": length_ratio_flag,
    }
    meta = {**result.meta, "z_gold": z["gold"], "z_proxy": z["proxy"], **thresholds}
    return replace(result, meta=meta, verdicts=_outcome_verdicts(result, z, **thresholds))


@analysis("policy.trends", result=PolicyTrendsResult, section="policy", needs=Needs(stage_kind="policy", eval_rollouts=True), order=2)
def analyze_policy_trends(run: Run, stage: str, *, z_significant: float = 2.0) -> PolicyTrendsResult:
    """Gold and proxy reward, KL, length and EOS rate at every evaluation of the stage, with SEMs; judges whether
    the gold reward peaked before the end (over-optimisation of the proxy).

    Settings:
        z_significant: paired z of the fall from the best earlier evaluation that warns (and of the proxy's rise that
            makes it a flag).
    """
    samples = eval_samples(run, stage)
    steps = sorted(int(s) for s in samples["step"].unique())
    rows = [
        {"step": step, "metric": metric, **_stats(samples.loc[samples["step"] == step, metric])}
        for step in steps
        for metric in present_metrics(samples)
    ]
    df = pd.DataFrame(rows, columns=list(PolicyTrendsResult.columns)).astype({"step": int, "n": int, "mean": float, "sem": float})
    judged = len(steps) >= 3 and "gold" in present_metrics(samples)
    verdicts = (_peak_verdict(samples, steps, z_significant),) if judged else ()
    return PolicyTrendsResult(df=df, meta={"stage": stage, "steps": steps, "z_significant": z_significant}, verdicts=verdicts)


@analysis(
    "policy.samples",
    result=SampleCompletionsResult,
    section="policy",
    needs=Needs(stage_kind="policy", eval_rollouts=True, checkpoints=True),
    order=3,
)
def analyze_sample_completions(run: Run, stage: str, *, n: int = 6, seed: int = 0) -> SampleCompletionsResult:
    """`n` eval prompts with the starting and the final policy's completion for the same seed, and each token's KL.

    The prompts: the n//3 largest gold gains, the n//3 largest gold drops (proxy when the task has no gold), and
    the rest drawn at random (numpy default_rng(`seed`)) from the others. Tokens are decoded with the stage's
    tokenizer (its final checkpoint, else its latest).

    Settings:
        n: prompts shown.
        seed: seed of the random choice of the prompts beyond the largest gains and drops.
    """
    samples = eval_samples(run, stage)
    start_step, final_step = int(samples["step"].min()), int(samples["step"].max())
    start, final = _at(samples, start_step), _at(samples, final_step)
    keys = sorted(start.index.intersection(final.index))
    by = next((m for m in ("gold", "proxy") if m in present_metrics(samples)), None)
    changes = (final.loc[keys, by] - start.loc[keys, by]) if by else pd.Series(np.nan, index=keys)
    tokenizer = stage_tokenizer(run, stage)
    rows = []
    for number, (key, reason) in enumerate(choose_samples(changes, n, seed, by or "reward"), start=1):
        for policy, part in (("start", start), ("final", final)):
            record = part.loc[key]
            ids = [int(i) for i in record["completion_ids"]]
            kl = [float(v) for v in record["kl_per_token"]]
            size = min(len(ids), len(kl))
            rows.append(
                {
                    "sample": number,
                    "reason": reason,
                    "prompt_id": str(record["prompt_id"]),
                    "prompt": str(record["prompt"]),
                    "policy": policy,
                    "step": int(record["step"]),
                    "completion": str(record["completion"]),
                    "gold": float(record["gold"]),
                    "proxy": float(record["proxy"]),
                    "seq_kl": float(record["kl"]),
                    "length": int(record["length"]),
                    "finished": bool(record["eos_rate"]),
                    "tokens": token_texts(tokenizer, ids[:size]),
                    "kl_per_token": kl[:size],
                }
            )
    df = pd.DataFrame(rows, columns=list(SampleCompletionsResult.columns))
    meta = {"stage": stage, "start_step": start_step, "final_step": final_step, "chosen_by": by or "random", "n": n, "seed": seed}
    return SampleCompletionsResult(df=df, meta=meta)


# --------------------------------------------------------------------------- shared pieces


def eval_samples(run: Run, stage: str) -> pd.DataFrame:
    """The stage's evaluation samples, one row each: step, key (prompt_id plus its occurrence at that step, which
    pairs a sample with the same prompt and seed at another step), prompt_id, prompt, completion, completion_ids,
    kl_per_token, and one float column per metric (gold, proxy, kl, length, eos_rate). gold is NaN without an
    oracle; proxy is NaN for a stage that optimised no reward model (DPO logs 0.0 for every sample)."""
    raw = run.eval_rollouts(stage)
    if raw.empty:
        raise ValueError(f"stage {stage!r} of {run.path} logged no evaluation samples; the policy analyses read them")
    raw = raw.sort_values(["step", "sample_id"] if "sample_id" in raw.columns else ["step"], kind="stable").reset_index(drop=True)
    out = pd.DataFrame({"step": raw["step"].astype(int), "prompt_id": raw["prompt_id"].astype(str)})
    out["key"] = out["prompt_id"] + "#" + out.groupby(["step", "prompt_id"]).cumcount().astype(str)
    for column in ("prompt", "completion", "completion_ids", "kl_per_token"):
        out[column] = raw[column]
    for metric, column in METRICS.items():
        values = raw[column] if column in raw.columns else pd.Series(np.nan, index=raw.index)
        out[metric] = pd.to_numeric(values, errors="coerce").astype(float)
    if (out["proxy"].fillna(0.0) == 0.0).all():
        out["proxy"] = np.nan
    return out


def present_metrics(samples: pd.DataFrame) -> list[str]:
    """The metrics with at least one finite value (gold needs an oracle, proxy a reward model)."""
    return [m for m in METRICS if samples[m].notna().any()]


def _at(samples: pd.DataFrame, step: int) -> pd.DataFrame:
    return samples[samples["step"] == step].set_index("key")


def _stats(values) -> dict:
    """{"mean", "sem", "n"} of the finite values; sem = sample std (ddof=1) / sqrt(n), NaN below two values."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sem = float(x.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    return {"mean": mean, "sem": sem, "n": n}


def _z(mean: float, sem: float) -> float:
    """mean / sem; ±inf for a nonzero change with no spread, 0 for no change at all, NaN when unknown."""
    if math.isnan(mean) or math.isnan(sem):
        return math.nan
    if sem == 0:
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / sem


def _pm(mean: float, sem: float) -> str:
    return f"{mean:.3g} ± {sem:.2g}"


def _signed(value: float) -> str:
    return f"{value:+.3g}"


def choose_samples(changes: pd.Series, n: int, seed: int, by: str) -> list[tuple[str, str]]:
    """(key, reason) of `n` samples: the n//3 largest rises of `changes`, the n//3 largest falls, then random
    others (default_rng(seed)), without repeats; ties go to the smaller key, so the choice is deterministic."""
    ranked = changes.dropna().rename("change").rename_axis("key").reset_index().sort_values(["change", "key"], ascending=[False, True])
    chosen: dict[str, str] = {}
    for key in ranked["key"].head(n // 3):
        chosen[key] = f"largest {by} gain"
    falls = ranked.sort_values(["change", "key"], ascending=[True, True])["key"]
    for key in [k for k in falls if k not in chosen][: n // 3]:
        chosen[key] = f"largest {by} drop"
    rest = [k for k in sorted(changes.index) if k not in chosen]
    picks = np.random.default_rng(seed).choice(len(rest), size=min(n - len(chosen), len(rest)), replace=False) if rest else []
    for i in sorted(int(p) for p in picks):
        chosen[rest[i]] = f"random (seed {seed})"
    return list(chosen.items())


def stage_tokenizer(run: Run, stage: str):
    """The tokenizer of the stage's final checkpoint (else its latest); the run's first one when the stage saved
    none (the registry only runs the samples on stages with a checkpoint, but a direct call may not)."""
    checkpoints = run.checkpoints(stage)
    return run.load_tokenizer(stage, checkpoints[-1].tag) if checkpoints else run.load_tokenizer()


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded completion (special tokens such as EOS kept): decoding prefixes
    keeps the spaces a tokenizer adds between words and multi-byte characters split over tokens."""
    texts, previous = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        texts.append(text[len(previous) :] if text.startswith(previous) else tokenizer.decode(ids[i : i + 1], skip_special_tokens=False))
        previous = text
    return texts


# --------------------------------------------------------------------------- verdicts


def _outcome_verdicts(
    result: PolicyOutcomeResult,
    z: dict[str, float],
    *,
    z_significant: float,
    eos_drop_warn: float,
    eos_drop_flag: float,
    length_ratio_warn: float,
    length_ratio_flag: float,
) -> tuple[Verdict, ...]:
    start_step, final_step = result.meta["start_step"], result.meta["final_step"]
    if start_step == final_step:
        return (
            Verdict(
                "policy outcome",
                "warn",
                f"the stage has a single evaluation (step {start_step}); there is no final policy to compare",
                "warn when the stage was evaluated only once",
            ),
        )
    return (
        _gold_verdict(result, z, z_significant),
        _eos_verdict(result, eos_drop_warn, eos_drop_flag),
        _length_verdict(result, length_ratio_warn, length_ratio_flag),
    )


def _gold_verdict(result: PolicyOutcomeResult, z: dict[str, float], z_significant: float) -> Verdict:
    check = "gold reward gain"
    threshold = (
        f"paired z = change / SEM over the same prompts and seeds: ok when z ≥ {z_significant:g} (a gain at about "
        f"{2 * NormalDist().cdf(z_significant) - 1:.0%} confidence), warn when −{z_significant:g} ≤ z < {z_significant:g}, flag when z < −{z_significant:g}; a gold fall beside a "
        "proxy rise is the proxy-gold divergence of reward hacking"
    )
    if "gold" not in result.metrics():
        return Verdict(check, "warn", "no gold reward in the evaluation samples (the task has no oracle)", threshold)
    gold, proxy = _change_text(result, "gold", z["gold"]), ""
    proxy_rose = "proxy" in result.metrics() and z["proxy"] >= z_significant
    if "proxy" in result.metrics():
        proxy = f"; proxy {_change_text(result, 'proxy', z['proxy'])}"
    level = judge(z["gold"], warn=z_significant, flag=-z_significant, higher_is_worse=False) if not math.isnan(z["gold"]) else "warn"
    if level == "flag" and proxy_rose:
        proxy += ": the proxy rose while the gold reward fell (reward hacking)"
    elif level == "warn" and proxy_rose:
        proxy += ": the proxy rose without a significant gold gain"
    return Verdict(check, level, f"gold {gold}{proxy}", threshold, value=z["gold"])


def _change_text(result: PolicyOutcomeResult, metric: str, z: float) -> str:
    v = result.value
    return (
        f"{_pm(v('start', metric), v('start', metric, 'sem'))} → {_pm(v('final', metric), v('final', metric, 'sem'))}, "
        f"paired change {_signed(v('change', metric))} ± {v('change', metric, 'sem'):.2g} over {int(v('change', metric, 'n'))} "
        f"prompts (z = {z:.1f})"
    )


def _eos_verdict(result: PolicyOutcomeResult, warn: float, flag: float) -> Verdict:
    start, final = result.value("start", "eos_rate"), result.value("final", "eos_rate")
    drop = 100 * (start - final)
    return Verdict(
        "EOS rate",
        judge(drop, warn=warn, flag=flag),
        f"{100 * start:.1f}% → {100 * final:.1f}% of completions end with EOS ({-drop:+.1f} points, paired SEM "
        f"{100 * result.value('change', 'eos_rate', 'sem'):.1f} points)",
        f"warn when the EOS rate falls by more than {warn:g} points, flag above {flag:g}: the policy "
        "stops ending its answers and runs into max_new_tokens",
        value=drop,
    )


def _length_verdict(result: PolicyOutcomeResult, warn: float, flag: float) -> Verdict:
    start, final = result.value("start", "length"), result.value("final", "length")
    ratio = final / start if start > 0 else math.inf
    shift = abs(math.log(ratio)) if 0 < ratio < math.inf else math.inf
    return Verdict(
        "length shift",
        judge(shift, warn=math.log(warn), flag=math.log(flag)),
        f"mean length {start:.1f} → {final:.1f} tokens (×{ratio:.2f}; paired change {_signed(result.value('change', 'length'))} "
        f"± {result.value('change', 'length', 'sem'):.2g})",
        f"warn when the mean length grows or shrinks by more than ×{warn:g}, flag beyond ×{flag:g}: "
        "length is the proxy exploit RLHF finds first (Singhal et al. 2023, 'A Long Way to Go')",
        value=ratio,
    )


def _peak_verdict(samples: pd.DataFrame, steps: list[int], z_significant: float) -> Verdict:
    """Did the gold reward peak before the final evaluation (Gao et al. 2022, reward-model over-optimisation)?"""
    final_step = steps[-1]
    final = _at(samples, final_step)
    means = {s: float(samples.loc[samples["step"] == s, "gold"].mean()) for s in steps[:-1]}
    best = max(means, key=lambda s: (means[s], -s))
    earlier = _at(samples, best)
    keys = earlier.index.intersection(final.index, sort=False)
    fall = {m: _stats(earlier.loc[keys, m].to_numpy(float) - final.loc[keys, m].to_numpy(float)) for m in ("gold", "proxy")}
    z_gold = _z(fall["gold"]["mean"], fall["gold"]["sem"])
    z_proxy_rise = -_z(fall["proxy"]["mean"], fall["proxy"]["sem"])
    level = judge(z_gold, warn=z_significant, flag=math.inf) if not math.isnan(z_gold) else "warn"
    final_mean = float(final["gold"].mean())
    evidence = (
        f"gold {final_mean:.3g} at the final step {final_step}, "
        + ("above" if final_mean >= means[best] else "below")
        + f" the best earlier evaluation ({means[best]:.3g} at step {best}): paired change step {best} → {final_step} "
        f"{_signed(-fall['gold']['mean'])} ± {fall['gold']['sem']:.2g} over {fall['gold']['n']} prompts (z of the fall = {z_gold:.1f})"
    )
    if level == "warn" and z_proxy_rise >= z_significant:
        level = "flag"
        evidence += f", while the proxy rose over the same steps (z = {z_proxy_rise:.1f})"
    return Verdict(
        "gold peak before the end",
        level,
        evidence,
        f"warn when the best earlier evaluation beats the final one by a paired z above {z_significant:g} (the best step is "
        "picked after looking, so this is a little easier to reach than at a step fixed in advance); flag when the "
        f"proxy rose meanwhile (z ≥ {z_significant:g}): over-optimisation of the proxy (Gao et al. 2022)",
        value=z_gold,
    )
