"""Length bias in RLHF on the built-in task: Singhal et al. (2023), "A Long Way to Go: Investigating Length
Correlations in RLHF", reproduced with rlhf-lens.

Two conditions, identical but for the labelers: "planted" labelers add `--bias` utility per word of an answer (a
length preference the gold reward does not share), "control" labelers add none. In each condition a ranking reward
model is trained from the labelers' comparisons on the same SFT policy, then PPO optimises the SFT policy against it.
The study asks what Singhal et al. asked: does the reward model learn the length preference (reward against length),
how much of the policy's proxy-reward gain is only its answers getting longer (the gain within length bins against
the total), and does the gold reward share the gain? It also reads the reward models' residual streams: is the
reward's read-out closer to the sentiment direction or to the length direction?

    make length-bias                              # from a fresh clone: set-up, then this script (about 12 minutes)
    .venv/bin/python analyses/length_bias.py --out runs/length_bias [--base runs/quick] [--bias 0.1] [--seed 0]

Writes to --out: base/ (the quick recipe's base and SFT stages, unless --base reuses a run that has them),
{planted,control}_reward/, {planted,control}_policy/ (run directories: `rlhf-lens report` works on each),
figures/*.png, figures.json and report.md (the figures with a short reading).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ROOT / "training"

CONDITIONS = ("planted", "control")
REWARD_BATCHES = ["stages.reward.group_by_prompt=true", "stages.reward.batch_size=90"]
"""Two prompts' 45 comparisons a step, as the tests train ranking reward models."""
POLICY_EVAL = ["data.eval_prompts=64", "stages.policy.eval_prompts=64", "stages.policy.eval_every=10"]
"""64 evaluation prompts, sampled at steps 0, 10, 20 and 30 (proxy against gold over steps)."""


def log(message: str) -> None:
    print(f"[length-bias {time.strftime('%H:%M:%S')}] {message}", flush=True)


def is_done(run_dir: Path) -> bool:
    from rlhf_lens.runs import Run

    return (run_dir / "run.json").is_file() and all(s.status == "done" for s in Run.open(run_dir).stages())


def train_recipe(recipe: str, out: Path, overrides: list[str]) -> Path:
    """Train `training/<recipe>` with `overrides` into `out`, or reuse `out` when it is already complete."""
    from rlhf_lens.training.config import load_recipe
    from rlhf_lens.training.pipeline import train

    if is_done(out):
        log(f"reusing {out}")
        return out
    log(f"training {recipe} -> {out}")
    return train(load_recipe(TRAINING / recipe, overrides), out, quiet=False, overwrite=True)


def base_run(args) -> Path:
    """A run with the base and SFT stages: --base, or the quick recipe's base and SFT stages trained under --out."""
    import tomllib

    from rlhf_lens.training.config import apply_overrides, from_dict
    from rlhf_lens.training.pipeline import train

    if args.base is not None:
        return args.base
    out = args.out / "base"
    if is_done(out):
        log(f"reusing {out}")
        return out
    raw = tomllib.loads((TRAINING / "sentiment_quick.toml").read_text())
    raw["stages"] = [stage for stage in raw["stages"] if stage["kind"] in ("base", "sft")]
    log(f"training the base and SFT stages of sentiment_quick.toml -> {out}")
    return train(from_dict(apply_overrides(raw, [f"seed={args.seed}"])), out, quiet=False, overwrite=True)


def train_condition(condition: str, base: Path, args) -> tuple[Path, Path]:
    """The condition's reward model (on the base run's SFT model) and PPO policy against it."""
    bias = args.bias if condition == "planted" else 0.0
    reward = train_recipe(
        "reward_length_quick.toml",
        args.out / f"{condition}_reward",
        [f"seed={args.seed}", f"task.options.length_bias={bias}", f'stages.reward.init_from="{base}:sft/final"', *REWARD_BATCHES],
    )
    policy = train_recipe(
        "ppo_quick.toml",
        args.out / f"{condition}_policy",
        [
            f"seed={args.seed}",
            f'stages.policy.init_from="{base}:sft/final"',
            f'stages.policy.reward_from="{reward}:reward/final"',
            *POLICY_EVAL,
        ],
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


def save_figures(measured: dict, folder: Path) -> list[str]:
    """One figure per question, the two conditions side by side; returns the file names."""
    import matplotlib.pyplot as plt

    from rlhf_lens import views

    folder.mkdir(parents=True, exist_ok=True)
    names = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        names.append(name)

    fig, axes = views.new_figure(12.0, 3.8, ncols=2)
    for ax, condition in zip(axes[0], CONDITIONS):
        measured[condition]["results"]["length"].plot(ax=ax)
        ax.set_title(f"{condition} reward model: {ax.get_title()}", fontsize=9)
    save(fig, "reward_vs_length.png")

    for condition in CONDITIONS:  # the binned heatmaps and the split of the gain: one figure per condition
        ax = measured[condition]["results"]["gain"].plot()
        ax.figure.suptitle(f"{condition}: proxy reward by length bin before and after PPO", fontsize=10)
        save(ax.figure, f"length_gain_{condition}.png")

    fig, axes = views.new_figure(12.0, 3.6, ncols=2)
    for ax, condition in zip(axes[0], CONDITIONS):
        measured[condition]["results"]["divergence"].plot(ax=ax)
        ax.set_title(f"{condition}: proxy and gold over PPO steps", fontsize=9)
    save(fig, "proxy_gold.png")

    fig, axes = views.new_figure(9.0, 3.4, ncols=2)
    split, share = axes[0]
    x = range(len(CONDITIONS))
    within = [measured[c]["figures"]["proxy_gain_within_bins"] for c in CONDITIONS]
    from_length = [measured[c]["figures"]["proxy_gain_from_length"] for c in CONDITIONS]
    split.bar(x, within, label="within length bins", color="tab:blue")
    split.bar(x, from_length, bottom=within, label="from the length shift", color="tab:orange")
    split.scatter(x, [measured[c]["figures"]["gold_gain"] for c in CONDITIONS], color="black", zorder=3, label="gold gain")
    split.set_xticks(list(x), CONDITIONS)
    split.axhline(0, color="grey", linewidth=0.6)
    split.set_ylabel("reward gain, start -> final policy")
    split.legend(fontsize=8)
    for i, condition in enumerate(CONDITIONS):
        f = measured[condition]["figures"]
        low, high = f["length_share_interval"]
        share.errorbar([i], [f["length_share"]], yerr=[[f["length_share"] - low], [high - f["length_share"]]], marker="o", capsize=4)
    share.axhline(0.5, color="tab:red", linestyle="--", linewidth=0.8, label="flag threshold (half the gain)")
    share.set_xticks(list(x), CONDITIONS)
    share.set_xlim(-0.5, len(CONDITIONS) - 0.5)
    share.set_ylabel("share of the proxy gain length explains")
    share.legend(fontsize=8)
    save(fig, "gain_split.png")
    return names


def report(measured: dict, figures: list[str], args, seconds: float) -> str:
    def row(label: str, key: str, fmt: str = "{:+.3f}") -> str:
        cells = []
        for condition in CONDITIONS:
            value = measured[condition]["figures"][key]
            cells.append(fmt.format(value) if isinstance(value, float) and math.isfinite(value) else str(value))
        return f"| {label} | " + " | ".join(cells) + " |"

    planted, control = (measured[c]["figures"] for c in CONDITIONS)
    lines = [
        "# Length bias on the built-in task (Singhal et al., 2023)",
        "",
        f"Planted labelers add {args.bias} utility per word; control labelers add none. Seed {args.seed}; "
        f"{seconds / 60:.1f} minutes end to end. Each reward model: `training/reward_length_quick.toml`; each policy: "
        "`training/ppo_quick.toml` (30 PPO steps) against it, from the same SFT policy.",
        "",
        "| figure | planted | control |",
        "|---|---|---|",
        row("reward model: reward-length correlation (held-out texts)", "rm_length_corr"),
        row("gold reward: length correlation (same texts)", "gold_length_corr"),
        row("reward model length verdict", "rm_length_verdict", "{}"),
        row("policy: mean length, start (tokens)", "mean_length_before", "{:.1f}"),
        row("policy: mean length, final (tokens)", "mean_length_after", "{:.1f}"),
        row("proxy reward gain", "proxy_gain"),
        row("... explained by the length shift", "proxy_gain_from_length"),
        row("... within length bins", "proxy_gain_within_bins"),
        row("share of the gain length explains", "length_share", "{:.2f}"),
        row("gold reward gain", "gold_gain"),
        row("length-hacking verdict", "length_verdict", "{}"),
        row("proxy-gold divergence verdict", "divergence_verdict", "{}"),
        row("cos(reward read-out, sentiment pattern), last layer", "readout_cosine_sentiment_pattern"),
        row("cos(reward read-out, length pattern), last layer", "readout_cosine_length_pattern"),
        row("reward variance the sentiment filter explains", "reward_share_sentiment_filter", "{:.3f}"),
        row("reward variance the length filter explains", "reward_share_length_filter", "{:.3f}"),
        "",
        "## Reading",
        "",
        f"- The planted reward model learnt the length preference: its reward correlates with length at "
        f"{planted['rm_length_corr']:+.2f} against {control['rm_length_corr']:+.2f} for the control, while the gold reward's "
        f"correlation with length is {planted['gold_length_corr']:+.2f}.",
        f"- Against it, PPO lengthened its answers from {planted['mean_length_before']:.1f} to {planted['mean_length_after']:.1f} "
        f"tokens (control: {control['mean_length_before']:.1f} to {control['mean_length_after']:.1f}), and the length shift "
        f"explains {planted['length_share']:.0%} of its proxy gain (control: {control['length_share']:.0%}). "
        f"Verdicts: planted {planted['length_verdict']}, control {control['length_verdict']}.",
        f"- Planted: {planted['length_evidence']}",
        "- As in Singhal et al., a large part of what looks like reward improvement is length; the within-bin gain is what "
        "the reward model rewards beyond length.",
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
    parser.add_argument("--base", type=Path, help="a run with base and sft stages to start from (default: train one)")
    parser.add_argument("--bias", type=float, default=0.1, help="utility per word the planted labelers add (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    base = base_run(args)
    measured = {}
    for condition in CONDITIONS:
        reward, policy = train_condition(condition, base, args)
        log(f"measuring {condition}")
        measured[condition] = measure(reward, policy)
    figures = save_figures(measured, args.out / "figures")
    seconds = time.perf_counter() - start
    (args.out / "figures.json").write_text(json.dumps({c: measured[c]["figures"] for c in CONDITIONS} | {"seconds": seconds}, indent=1))
    (args.out / "report.md").write_text(report(measured, figures, args, seconds))
    log(f"done in {seconds / 60:.1f} min: {args.out / 'report.md'}")
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
