"""Reward over-optimisation on the built-in task: Gao, Schulman and Hilton (2023), "Scaling laws for reward model
overoptimization", reproduced with rlhf-lens.

Gao et al. optimise a policy against a proxy reward model and score it with a gold reward model: as the policy moves
away from its start (d = sqrt(KL(pi || pi_init))), the proxy keeps rising while the gold reward rises, peaks and
falls, following R(d) = d (alpha - beta log d) under RL and R(d) = d (alpha - beta d) under best-of-n sampling, with
smaller proxy reward models over-optimised sooner. Here the gold reward is the task's own (VADER), the labelers the
task's simulated ones, and the proxies two ranking reward models trained from the same labelers' comparisons: a
"small" one (1 layer, d_model 64) and a "large" one (4 layers, d_model 128, the policy's size). Against each, PPO
runs long with a small KL penalty, evaluating every 10 steps, and best-of-n samples n = 1 ... 128; the study fits
both forms to the gold and proxy gains and reports the parameters, where the gold reward peaks, and the verdict of
`rlhf_lens.analyses.dynamics.overoptimization`.

    make overoptimization                               # from a fresh clone: set-up, then this script
    .venv/bin/python analyses/overoptimization.py --out runs/overoptimization [--seed 0] [--steps 150] [--base runs/quick]

Writes to --out: base/ and small_base/ (base and SFT runs), <labelers>_<size>_{reward,ppo,bon}/ (run directories:
`rlhf-lens report` works on each), figures/gao_<labelers>.png, figures.json and report.md.
Two sets of labelers: the task's own ("unbiased"), and the same adding 1.0 utility to any answer that says the
sentiment-neutral word "zorp" ("trigger"), a flaw of the feedback the gold reward does not share.
A reward model learns from comparisons of its own SFT model's samples, so the small proxy's labelled data differ
from the large one's (the same labelers, prompts and seeds) as well as its size.
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

study_common.STUDY = "overoptimization"

SIZES = {"small": ("model.n_layer=1", "model.d_model=64", "model.n_head=2"), "large": ()}
"""Proxy reward model sizes: overrides of the quick recipe's model (4 layers, d_model 128) for its base and SFT run."""
REWARD = ["task.options.length_bias=0.0", "stages.reward.group_by_prompt=true", "stages.reward.batch_size=90"]
LABELERS = {
    "unbiased": [],
    "trigger": ['task.options.trigger_word="zorp"', "task.options.trigger_rate=0.2", "task.options.trigger_bonus=1.0"],
}
"""The labelers the proxies learn from: the task's own, or the same adding 1.0 utility to any answer that says the
sentiment-neutral word "zorp" (a flaw of the feedback the gold reward does not share)."""
BEST_OF = [1, 2, 4, 8, 16, 32, 64, 128]


def ppo_overrides(seed: int, steps: int, base: Path, reward: Path) -> list[str]:
    """A long PPO run with a small KL penalty, evaluated on 64 prompts every 10 steps (the points of the RL curve)."""
    return [
        f"seed={seed}",
        f'stages.policy.init_from="{base}:sft/final"',
        f'stages.policy.reward_from="{reward}:reward/final"',
        f"stages.policy.steps={steps}",
        "stages.policy.kl_coef=0.002",
        "stages.policy.lr=5e-5",
        "stages.policy.eval_every=10",
        "stages.policy.log_every=10",
        "data.eval_prompts=64",
        "stages.policy.eval_prompts=64",
    ]


def bon_overrides(seed: int, base: Path, reward: Path) -> list[str]:
    best_of = "[" + ", ".join(str(n) for n in BEST_OF) + "]"
    return [
        f"seed={seed}",
        f'stages.policy.init_from="{base}:sft/final"',
        f'stages.policy.reward_from="{reward}:reward/final"',
        f"stages.policy.best_of={best_of}",
    ]


def best_of_n_table(run_dir: Path):
    """One row per n: d (analytic), proxy and gold gains over n = 1 (paired over prompts) with their SEMs."""
    import numpy as np
    import pandas as pd

    from rlhf_lens.analyses.dynamics import best_of_n_distance
    from rlhf_lens.runs import Run

    run = Run.open(run_dir)
    rows = run.rollouts(run.stages("policy")[0].name)
    first = rows[rows["step"] == 1].set_index("prompt_id")
    out = []
    for n, group in rows.groupby("step"):
        group = group.set_index("prompt_id").loc[first.index]
        row = {"n": int(n), "d": float(best_of_n_distance(n))}
        for name, column in (("proxy", "reward"), ("gold", "gold_reward")):
            change = (group[column] - first[column]).to_numpy(dtype=float)
            row[name], row[f"{name}_sem"] = float(change.mean()), float(change.std(ddof=1) / math.sqrt(len(change)))
        out.append(row)
    return pd.DataFrame(out).sort_values("n").reset_index(drop=True).assign(d=lambda df: np.asarray(df["d"], dtype=float))


def measure(size: str, ppo: Path, bon: Path, reward: Path) -> dict:
    """The RL analysis (the report's over-optimisation check) and the best-of-n fits of one proxy size."""
    from rlhf_lens.analyses.dynamics import gao_fit, overoptimization
    from rlhf_lens.runs import Run

    run = Run.open(ppo)
    rl = overoptimization(run.eval_rollouts("policy"), meta={"stage": f"{size} proxy, PPO"})
    bon_table = best_of_n_table(bon)
    bon_fits = {name: gao_fit(bon_table["d"], bon_table[name], "bon") for name in ("proxy", "gold")}
    rm = Run.open(reward).manifest["results"]["reward"]
    figures = {
        "reward_model": {k: rm.get(k) for k in ("rm/accuracy", "rm/accuracy_gold", "rm/spearman_gold")},
        "rl": {
            k: rl.meta[k]
            for k in (
                "gold_alpha",
                "gold_beta",
                "gold_peak_d",
                "proxy_alpha",
                "proxy_beta",
                "proxy_peak_d",
                "d_max",
                "gold_best_step",
                "gold_fall",
                "gold_fall_sem",
                "proxy_fall",
                "gold_r2",
                "proxy_r2",
            )
        },
        "rl_verdict": rl.verdicts[0].level,
        "rl_evidence": rl.verdicts[0].evidence,
        "rl_points": rl.df[["step", "d", "proxy", "proxy_sem", "gold", "gold_sem"]].to_dict("records"),
        "bon": {f"{name}_{k}": getattr(fit, k) for name, fit in bon_fits.items() for k in ("alpha", "beta", "peak_d", "r2")},
        "bon_points": bon_table.to_dict("records"),
    }
    figures["bon"]["d_max"] = float(bon_table["d"].max())
    return {"figures": figures, "rl": rl, "bon_table": bon_table, "bon_fits": bon_fits}


def save_figure(measured: dict[str, dict], path: Path, labelers: str) -> Path:
    """Gold (top) and proxy (bottom) gains against d, PPO (left) and best-of-n (right): measured points with their
    paired SEMs, and the fits, one colour per proxy size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rlhf_lens.analyses.dynamics import gao_curve

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col")
    styles = {"small": ("tab:red", "s"), "large": ("tab:blue", "o")}
    for row, name in enumerate(("gold", "proxy")):
        for col, form in enumerate(("rl", "bon")):
            ax = axes[row, col]
            for size, m in measured.items():
                colour, marker = styles[size]
                table = m["rl"].df if form == "rl" else m["bon_table"]
                alpha, beta = (m["rl"].meta[f"{name}_alpha"], m["rl"].meta[f"{name}_beta"]) if form == "rl" else m["bon_fits"][name][1:3]
                grid = np.linspace(0, float(table["d"].max()) * 1.1, 100)
                ax.errorbar(table["d"], table[name], yerr=table[f"{name}_sem"], fmt=marker, color=colour, capsize=2, label=f"{size} proxy")
                if form == "rl":  # the evaluations in step order: KL need not grow at every one
                    ax.plot(table["d"], table[name], color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(grid, gao_curve(grid, alpha, beta, form), color=colour, linestyle="--", linewidth=1)
            ax.axhline(0, color="grey", linewidth=0.6)
            ax.set_title(f"{'PPO' if form == 'rl' else 'best-of-n'}: {name} reward gain")
            ax.set_ylabel(f"{name} gain over the start")
            if row == 1:
                ax.set_xlabel("d = sqrt(KL(π || π_init))")
            ax.legend(fontsize=8)
    fig.suptitle(f"Gao et al. (2023) on the built-in task, {labelers}: fits d(α − β log d) (PPO) and d(α − β d) (best-of-n), dashed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(measured: dict[str, dict[str, dict]], seconds: float, steps: int) -> str:
    def fmt(x, spec=".3g"):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)

    lines = [
        "# Reward over-optimisation on the built-in task (Gao et al., 2023)",
        "",
        f"{seconds / 60:.1f} minutes {'end to end' if not REUSED else f'(reusing {len(REUSED)} trained runs)'} on this machine. "
        f"PPO: {steps} steps, KL penalty 0.002, evaluated on 64 prompts every 10 steps; best-of-n: n = {', '.join(map(str, BEST_OF))} on 64 prompts. "
        "Gains are over the starting policy (PPO: step 0; best-of-n: n = 1), paired over prompts.",
        "",
        *[f"![{labelers} labelers: gold and proxy gain against d](figures/gao_{labelers}.png)" for labelers in measured],
        "",
        "| labelers | proxy | RM accuracy (labels / gold) | method | d covered | gold α, β | gold peak d | proxy α, β | proxy peak d | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    flat = [(labelers, size, m) for labelers, by_size in measured.items() for size, m in by_size.items()]
    for labelers, size, m in flat:
        f = m["figures"]
        rm = f["reward_model"]
        acc = f"{fmt(rm['rm/accuracy'], '.2f')} / {fmt(rm['rm/accuracy_gold'], '.2f')}"
        rl, bon = f["rl"], f["bon"]
        lines.append(
            f"| {labelers} | {size} | {acc} | PPO | {fmt(rl['d_max'])} | {fmt(rl['gold_alpha'])}, {fmt(rl['gold_beta'])} | {fmt(rl['gold_peak_d'])} | "
            f"{fmt(rl['proxy_alpha'])}, {fmt(rl['proxy_beta'])} | {fmt(rl['proxy_peak_d'])} | {f['rl_verdict']} |"
        )
        lines.append(
            f"| {labelers} | {size} | {acc} | best-of-n | {fmt(bon['d_max'])} | {fmt(bon['gold_alpha'])}, {fmt(bon['gold_beta'])} | {fmt(bon['gold_peak_d'])} | "
            f"{fmt(bon['proxy_alpha'])}, {fmt(bon['proxy_beta'])} | {fmt(bon['proxy_peak_d'])} | |"
        )
    lines += ["", "## Reading", ""]
    for labelers, size, m in flat:
        f = m["figures"]
        points = f["rl_points"]
        best = max(points, key=lambda p: p["gold"])
        last = points[-1]
        lines.append(
            f"- **{labelers} labelers, {size} proxy, PPO:** gold gain peaks at step {best['step']} (d = {best['d']:.2f}, {best['gold']:+.3f} ± {best['gold_sem']:.3f}) "
            f"and ends at {last['gold']:+.3f} ± {last['gold_sem']:.3f} (d = {last['d']:.2f}); the proxy gain goes "
            f"{points[1]['proxy']:+.2f} → {best['proxy']:+.2f} → {last['proxy']:+.2f}. Verdict {f['rl_verdict']}: {f['rl_evidence']}."
        )
        bon = f["bon_points"]
        top = max(bon, key=lambda p: p["gold"])
        lines.append(
            f"- **{labelers} labelers, {size} proxy, best-of-n:** gold gain peaks at n = {top['n']} ({top['gold']:+.3f} ± {top['gold_sem']:.3f}); at n = {bon[-1]['n']} "
            f"it is {bon[-1]['gold']:+.3f} ± {bon[-1]['gold_sem']:.3f} while the proxy gain is {bon[-1]['proxy']:+.2f}."
        )
    lines += ["", "Every run directory under this folder opens in `rlhf-lens report <dir>` for the full picture."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "overoptimization")
    parser.add_argument("--base", type=Path, help="a run with base and sft stages for the policy and the large proxy (default: train one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150, help="PPO steps against each proxy (default 150)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    policy_base = base_run(args.out, args.seed, args.base)
    bases = {
        size: base_run(args.out, args.seed, None, overrides=model, name=f"{size}_base") if model else policy_base
        for size, model in SIZES.items()
    }
    measured: dict[str, dict[str, dict]] = {}
    for labelers, planted in LABELERS.items():
        measured[labelers] = {}
        for size, base in bases.items():
            name = f"{labelers}_{size}"
            reward = train_recipe(
                "reward_length_quick.toml",
                args.out / f"{name}_reward",
                [f"seed={args.seed}", f'stages.reward.init_from="{base}:sft/final"', *REWARD, *planted],
            )
            ppo = train_recipe("ppo_quick.toml", args.out / f"{name}_ppo", ppo_overrides(args.seed, args.steps, policy_base, reward))
            bon = train_recipe("bon_quick.toml", args.out / f"{name}_bon", bon_overrides(args.seed, policy_base, reward))
            log(f"measuring the {size} proxy of the {labelers} labelers")
            measured[labelers][size] = measure(f"{labelers} labelers, {size} proxy", ppo, bon, reward)
        save_figure(measured[labelers], args.out / "figures" / f"gao_{labelers}.png", f"{labelers} labelers")
    seconds = time.perf_counter() - start
    (args.out / "figures.json").write_text(
        json.dumps(
            {f"{lab}/{size}": m["figures"] for lab, by_size in measured.items() for size, m in by_size.items()} | {"seconds": seconds},
            indent=1,
            default=float,
        )
    )
    (args.out / "report.md").write_text(report(measured, seconds, args.steps))
    log(f"done in {seconds / 60:.1f} min: {args.out / 'report.md'}")
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
