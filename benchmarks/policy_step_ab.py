"""Policy stages before and after a change to the trainer, side by side in one sitting (issue 14).

    .venv/bin/python benchmarks/policy_step_ab.py --before REV [--base runs/quick] [--algorithms grpo ppo dpo] [--repeats 3]

Checks REV out into a temporary git worktree and trains each algorithm's quick recipe (from --base's SFT policy and
reward model, evaluation only at the start and the end) with the code at REV ("before") and with this checkout
("after"), alternating, each in its own process with the same thread count. Prints the median seconds of the policy
stage (run.json's `seconds`) and the ratio before / after; writes benchmarks/results/policy_step_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "policy_step_ab.json"


def train_seconds(code: Path, algorithm: str, base: Path, out: Path, threads: int) -> float:
    """Train training/<algorithm>_quick.toml with the rlhf_lens package found in `code`; the policy stage's seconds."""
    overrides = [f'stages.policy.init_from="{base}:sft/final"', "stages.policy.eval_every=1000"]
    if algorithm != "dpo":
        overrides.append(f'stages.policy.reward_from="{base}:reward/final"')
    else:
        overrides.append(f'stages.policy.feedback="{base}/data/feedback.jsonl"')
    command = [
        sys.executable,
        "-m",
        "rlhf_lens.cli",
        "train",
        str(ROOT / "training" / f"{algorithm}_quick.toml"),
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
    ]
    for override in overrides:
        command += ["--set", override]
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    subprocess.run(command, cwd=code, env=env, check=True, capture_output=True, text=True)
    return float(json.loads((out / "run.json").read_text())["results"]["policy"]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the trainer to compare against")
    parser.add_argument("--base", type=Path, default=ROOT / "runs" / "quick")
    parser.add_argument("--algorithms", nargs="+", default=["grpo", "ppo", "dpo"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    base = args.base.absolute()
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True, capture_output=True)
        try:
            seconds = {a: {"before": [], "after": []} for a in args.algorithms}
            for _ in range(args.repeats):
                for algorithm in args.algorithms:
                    for side, code in (("before", before), ("after", ROOT)):
                        seconds[algorithm][side].append(
                            train_seconds(code, algorithm, base, Path(tmp) / f"{algorithm}-{side}", args.threads)
                        )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False, capture_output=True)
    print(f"policy stage seconds, median of {args.repeats}, {args.threads} threads; before = {args.before}, after = this checkout")
    summary = {}
    for algorithm, sides in seconds.items():
        b, a = statistics.median(sides["before"]), statistics.median(sides["after"])
        summary[algorithm] = {"before": sides["before"], "after": sides["after"], "ratio": b / a}
        print(f"  {algorithm:<5} before {b:6.1f} s   after {a:6.1f} s   speed-up {b / a:.2f}x")
    RESULTS.write_text(json.dumps({"before": args.before, "threads": args.threads, "results": summary}, indent=1))


if __name__ == "__main__":
    main()
