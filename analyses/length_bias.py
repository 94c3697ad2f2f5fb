"""Length bias in RLHF on the built-in task: Singhal et al. (2023), "A Long Way to Go: Investigating Length
Correlations in RLHF", reproduced with rlhf-lens.

Two conditions, identical but for the labelers: "planted" labelers add `--bias` utility per word of an answer (a
length preference the gold reward does not share), "control" labelers add none. In each condition a ranking reward
model is trained from the labelers' comparisons on the same SFT policy, then PPO optimises the SFT policy against it.
The study asks what Singhal et al. asked: does the reward model learn the length preference (reward against length),
how much of the policy's proxy-reward gain is only its answers getting longer (the gain within length bins against
the total), and does the gold reward share the gain? It also reads the reward models' residual streams: is the
reward's read-out closer to the sentiment direction or to the length direction?

    make length-bias                              # from a fresh clone: set-up, then this script
    .venv/bin/python analyses/length_bias.py --out runs/length_bias [--seeds 0 1 2] [--bias 0.1] [--base runs/quick]

Each seed trains its own base and SFT model (unless --base gives a run that has them), so the figures are reported
as the mean and range over seeds. Writes to --out: seed-S/{base,planted_reward,control_reward,planted_policy,
control_policy}/ (run directories: `rlhf-lens report` works on each), figures/*.png, figures.json and report.md (the
figures with a short reading).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import study_common
from study_common import REUSED, ROOT, base_run, log, train_recipe

study_common.STUDY = "length-bias"

CONDITIONS = ("planted", "control")
REWARD_BATCHES = ["stages.reward.group_by_prompt=true", "stages.reward.batch_size=90"]
"""Two prompts' 45 comparisons a step, as the tests train ranking reward models."""
POLICY_EVAL = ["data.eval_prompts=64", "stages.policy.eval_prompts=64", "stages.policy.eval_every=10"]
"""64 evaluation prompts, sampled at steps 0, 10, 20 and 30 (proxy against gold over steps)."""


def train_condition(condition: str, base: Path, folder: Path, seed: int, bias: float) -> tuple[Path, Path]:
    """The condition's reward model (on the base run's SFT model) and PPO policy against it, under `folder`."""
    reward = train_recipe(
        "reward_length_quick.toml",
        folder / f"{condition}_reward",
        [
            f"seed={seed}",
            f"task.options.length_bias={bias if condition == 'planted' else 0.0}",
            f'stages.reward.init_from="{base}:sft/final"',
            *REWARD_BATCHES,
        ],
    )
    policy = train_recipe(
        "ppo_quick.toml",
        folder / f"{condition}_policy",
        [f"seed={seed}", f'stages.policy.init_from="{base}:sft/final"', f'stages.policy.reward_from="{reward}:reward/final"', *POLICY_EVAL],
    )
    return reward, policy


def measure(reward_dir: Path, policy_dir: Path) -> dict:
    """The condition's figures, and its results for the plots."""
    from rlhf_lens.analyses import analyze_reward_length
    from rlhf_lens.analyses.hacking import analyze_length_hacking, analyze_proxy_gold_divergence
    from rlhf_lens.analyses.probes import analyze_reward_directions
    from rlhf_lens.runs import Run

    reward, policy = Run.open(reward_dir), Run.open(policy_dir)
    length = analyze_reward_length(reward, stage="reward")
    gain = analyze_length_hacking(policy, stage="policy")
    divergence = analyze_proxy_gold_divergence(policy, stage="policy")
    directions = analyze_reward_directions(reward, stage="reward")
    last = directions.df[directions.df["layer"] == directions.df["layer"].max()].set_index("concept")
    figures = {
        "rm_length_corr": length.meta["length_corr"],
        "gold_length_corr": length.meta["gold_length_corr"],
        "rm_length_verdict": length.verdicts[0].level,
        "mean_length_before": gain.number("mean_length_before"),
        "mean_length_after": gain.number("mean_length_after"),
        "proxy_gain": gain.number("proxy_gain"),
        "proxy_gain_from_length": gain.number("proxy_length"),
        "proxy_gain_within_bins": gain.number("proxy_within"),
        "length_share": gain.number("length_share"),
        "length_share_interval": [gain.number("length_share_low"), gain.number("length_share_high")],
        "gold_gain": gain.number("gold_gain"),
        "length_verdict": gain.verdicts[0].level,
        "length_evidence": gain.verdicts[0].evidence,
        "divergence_verdict": divergence.verdicts[0].level,
        "readout_cosine_sentiment_pattern": float(last.loc["sentiment · pattern", "cosine"]),
        "readout_cosine_length_pattern": float(last.loc["length · pattern", "cosine"]),
        "reward_share_sentiment_filter": float(last.loc["sentiment · filter", "variance_share"]),
        "reward_share_length_filter": float(last.loc["length · filter", "variance_share"]),
    }
    return {"figures": figures, "results": {"length": length, "gain": gain, "divergence": divergence, "directions": directions}}


def save_figures(measured: dict[int, dict], folder: Path) -> list[str]:
    """One figure per question, the two conditions side by side (the first seed's runs), and the split of the gain
    over every seed; returns the file names. `measured`: {seed: {condition: measure(...)}}."""
    import matplotlib.pyplot as plt
    import numpy as np

    from rlhf_lens import views

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    seeds = list(measured)
    first = measured[seeds[0]]

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)

    fig, axes = views.new_figure(12.0, 3.8, ncols=2)
    for ax, condition in zip(axes[0], CONDITIONS):
        first[condition]["results"]["length"].plot(ax=ax)
        ax.set_title(f"{condition} reward model (seed {seeds[0]}): {ax.get_title()}", fontsize=9)
    save(fig, "reward_vs_length.png")

    for condition in CONDITIONS:  # the binned heatmaps and the split of the gain: one figure per condition
        fig = np.ravel(first[condition]["results"]["gain"].plot())[0].figure
        fig.suptitle(f"{condition} (seed {seeds[0]}): proxy reward by length bin before and after PPO", fontsize=10)
        save(fig, f"length_gain_{condition}.png")

    fig, axes = views.new_figure(12.0, 3.6, ncols=2)
    for ax, condition in zip(axes[0], CONDITIONS):
        first[condition]["results"]["divergence"].plot(ax=ax)
        ax.set_title(f"{condition} (seed {seeds[0]}): proxy and gold over PPO steps", fontsize=9)
    save(fig, "proxy_gold.png")

    fig, axes = views.new_figure(10.0, 3.6, ncols=2)
    split, share = axes[0]
    width = 0.8 / len(seeds)
    for j, seed in enumerate(seeds):
        x = np.arange(len(CONDITIONS)) + (j - (len(seeds) - 1) / 2) * width
        f = [measured[seed][c]["figures"] for c in CONDITIONS]
        within = [g["proxy_gain_within_bins"] for g in f]
        split.bar(x, within, width, color="tab:blue", label="within length bins" if j == 0 else None)
        split.bar(
            x,
            [g["proxy_gain_from_length"] for g in f],
            width,
            bottom=within,
            color="tab:orange",
            label="from the length shift" if j == 0 else None,
        )
        split.scatter(x, [g["gold_gain"] for g in f], color="black", zorder=3, s=12, label="gold gain" if j == 0 else None)
        low = [g["length_share"] - g["length_share_interval"][0] for g in f]
        high = [g["length_share_interval"][1] - g["length_share"] for g in f]
        share.errorbar(x, [g["length_share"] for g in f], yerr=[low, high], fmt="o", capsize=3, color=f"C{j}", label=f"seed {seed}")
    for ax in (split, share):
        ax.set_xticks(range(len(CONDITIONS)), CONDITIONS)
        ax.axhline(0, color="grey", linewidth=0.6)
    split.set_ylabel("reward gain, start -> final policy")
    split.set_title("proxy gain split, one bar per seed", fontsize=9)
    split.legend(fontsize=8)
    share.axhline(0.5, color="tab:red", linestyle="--", linewidth=0.8, label="flag threshold (half the gain)")
    share.set_ylabel("share of the proxy gain length explains")
    share.set_title("length share with its 90% bootstrap interval", fontsize=9)
    share.legend(fontsize=8)
    save(fig, "gain_split.png")
    return names


ROWS = [
    ("reward model: reward-length correlation (held-out texts)", "rm_length_corr", "{:+.2f}"),
    ("gold reward: length correlation (same texts)", "gold_length_corr", "{:+.2f}"),
    ("reward model length verdict", "rm_length_verdict", "{}"),
    ("policy: mean length, start (tokens)", "mean_length_before", "{:.1f}"),
    ("policy: mean length, final (tokens)", "mean_length_after", "{:.1f}"),
    ("proxy reward gain", "proxy_gain", "{:+.2f}"),
    ("... explained by the length shift", "proxy_gain_from_length", "{:+.2f}"),
    ("... within length bins", "proxy_gain_within_bins", "{:+.2f}"),
    ("share of the gain length explains", "length_share", "{:.2f}"),
    ("gold reward gain", "gold_gain", "{:+.2f}"),
    ("length-hacking verdict", "length_verdict", "{}"),
    ("proxy-gold divergence verdict", "divergence_verdict", "{}"),
    ("cos(reward read-out, sentiment pattern), last layer", "readout_cosine_sentiment_pattern", "{:+.2f}"),
    ("cos(reward read-out, length pattern), last layer", "readout_cosine_length_pattern", "{:+.2f}"),
    ("reward variance the sentiment filter explains", "reward_share_sentiment_filter", "{:.2f}"),
    ("reward variance the length filter explains", "reward_share_length_filter", "{:.2f}"),
]
"""The report's table: label, figure, format."""


def cell(values: list, fmt: str) -> str:
    """Numbers: the mean and, over several seeds, the range; words (verdicts): each seed's, or one when they agree."""
    if all(isinstance(v, float) for v in values):
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return "–"
        mean = fmt.format(sum(finite) / len(finite))
        return mean if len(finite) == 1 else f"{mean} ({fmt.format(min(finite))} to {fmt.format(max(finite))})"
    return str(values[0]) if len(set(values)) == 1 else " / ".join(map(str, values))


def report(measured: dict[int, dict], figures: list[str], bias: float, seconds: float) -> str:
    seeds = list(measured)

    def values(condition: str, key: str) -> list:
        return [measured[seed][condition]["figures"][key] for seed in seeds]

    def mean(condition: str, key: str) -> float:
        return sum(values(condition, key)) / len(seeds)

    def span(condition: str, key: str, fmt: str) -> str:
        v = values(condition, key)
        return fmt.format(v[0]) if len(v) == 1 else f"{fmt.format(min(v))} to {fmt.format(max(v))}"

    table = [f"| {label} | {cell(values('planted', key), fmt)} | {cell(values('control', key), fmt)} |" for label, key, fmt in ROWS]
    flagged = {c: sum(v == "flag" for v in values(c, "length_verdict")) for c in CONDITIONS}
    closer = sum(
        abs(s) > abs(n)
        for s, n in zip(values("control", "readout_cosine_sentiment_pattern"), values("control", "readout_cosine_length_pattern"))
    )
    lines = [
        "# Length bias on the built-in task (Singhal et al., 2023)",
        "",
        f"Planted labelers add {bias} utility per word of an answer; control labelers add none. Seeds "
        f"{', '.join(map(str, seeds))} (each seed trains its own base and SFT model, reward models and policies); "
        f"{seconds / 60:.1f} minutes {'end to end' if not REUSED else f'(reusing {len(REUSED)} trained runs)'} on this machine. Each reward model: `training/reward_length_quick.toml`; "
        "each policy: `training/ppo_quick.toml` (30 PPO steps) against it, from the same SFT policy. Cells: the mean over "
        "the seeds (the range in parentheses); verdicts per seed where they differ.",
        "",
        "| figure | planted | control |",
        "|---|---|---|",
        *table,
        "",
        "## Reading",
        "",
        f"- The planted reward model learnt the length preference: its reward correlates with length at "
        f"{span('planted', 'rm_length_corr', '{:+.2f}')} against {span('control', 'rm_length_corr', '{:+.2f}')} for the "
        f"control, while the gold reward's correlation with length is {span('planted', 'gold_length_corr', '{:+.2f}')}.",
        f"- Against it, PPO lengthened its answers from {mean('planted', 'mean_length_before'):.1f} to "
        f"{mean('planted', 'mean_length_after'):.1f} tokens on average (control: {mean('control', 'mean_length_before'):.1f} to "
        f"{mean('control', 'mean_length_after'):.1f}), and the length shift explains {span('planted', 'length_share', '{:.0%}')} "
        f"of its proxy gain (control: {span('control', 'length_share', '{:.0%}')}). The length check flags the planted "
        f"policy on {flagged['planted']} of {len(seeds)} seeds and the control on {flagged['control']}.",
        f"- The gold reward gained {span('planted', 'gold_gain', '{:+.2f}')} under the planted reward model and "
        f"{span('control', 'gold_gain', '{:+.2f}')} under the control: as Singhal et al. found, much of what looks like "
        "reward improvement is length; the within-bin gain is what the reward model rewards beyond length.",
        f"- Inside the reward models: the length filter explains {span('planted', 'reward_share_length_filter', '{:.2f}')} of "
        f"the planted reward's variance and {span('control', 'reward_share_length_filter', '{:.2f}')} of the control's; "
        f"the control's read-out is closer to the sentiment pattern than to the length pattern on {closer} of {len(seeds)} "
        f"seeds (cosine {span('control', 'readout_cosine_sentiment_pattern', '{:+.2f}')} against "
        f"{span('control', 'readout_cosine_length_pattern', '{:+.2f}')}).",
        f"- Seed {seeds[0]}, planted: {measured[seeds[0]]['planted']['figures']['length_evidence']}",
        "",
        "## Figures",
        "",
        *[f"![{name}](figures/{name})" for name in figures],
        "",
        "Every run directory under this folder opens in `rlhf-lens report <dir>` for the full picture.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "length_bias")
    parser.add_argument("--base", type=Path, help="a run with base and sft stages to start every seed from (default: train one per seed)")
    parser.add_argument("--bias", type=float, default=0.1, help="utility per word the planted labelers add (default 0.1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    measured: dict[int, dict] = {}
    for seed in args.seeds:
        folder = args.out / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        base = base_run(folder, seed, args.base)
        measured[seed] = {}
        for condition in CONDITIONS:
            reward, policy = train_condition(condition, base, folder, seed, args.bias)
            log(f"measuring seed {seed}, {condition}")
            measured[seed][condition] = measure(reward, policy)
    figures = save_figures(measured, args.out / "figures")
    seconds = time.perf_counter() - start
    figures_json = {str(seed): {c: measured[seed][c]["figures"] for c in CONDITIONS} for seed in args.seeds}
    (args.out / "figures.json").write_text(json.dumps(figures_json | {"seconds": seconds}, indent=1))
    (args.out / "report.md").write_text(report(measured, figures, args.bias, seconds))
    log(f"done in {seconds / 60:.1f} min: {args.out / 'report.md'}")
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
