"""How long the policy-diff analyses take on a run (issue: behaviour diff, logit lens and layer-by-layer patching
under 60 s together on 2 cores on the demo run).

    .venv/bin/python benchmarks/policy_diff_timing.py runs/demo [--repeats 2]

Each analysis is recomputed (the cache is bypassed and rewritten with the same result), `--repeats` times in a row,
after one untimed warm-up analysis that loads the libraries. Prints one row per analysis (min and max seconds) and
the totals of the three groups the issue names; writes benchmarks/results/policy_diff_timing.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import time
from pathlib import Path

import torch

from rlhf_lens.analyses import analyze
from rlhf_lens.runs import Run

GROUPS = {
    "behaviour diff": ("policy.outcome", "policy.samples", "policy_diff.behaviour", "policy_diff.diversity"),
    "logit lens": ("policy_diff.logit_lens",),
    "layer-by-layer patching": ("policy_diff.patching",),
    "(also) position patching": ("policy_diff.patching_positions",),
}
RESULTS = Path(__file__).resolve().parent / "results" / "policy_diff_timing.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    run = Run.open(args.run)
    analyze(run, ["provenance.stages"], force=True, quiet=True)  # warm-up: imports, first model load
    seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for names in GROUPS.values():
            for outcome in analyze(run, list(names), force=True, quiet=True):
                if outcome.status != "computed":
                    raise SystemExit(f"{outcome.label} was {outcome.status}: {outcome.reason}")
                seconds.setdefault(outcome.label, []).append(outcome.seconds)
    print(
        f"{run.path}: torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, {args.repeats} repeats, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    for label, values in seconds.items():
        print(f"  {label:<44} {min(values):6.2f} s  (max {max(values):6.2f})")
    totals = {}
    for group, names in GROUPS.items():
        totals[group] = sum(min(v) for label, v in seconds.items() if label.split(" [")[0] in names)
        print(f"{group:<46} {totals[group]:6.2f} s")
    required = sum(totals[g] for g in ("behaviour diff", "logit lens", "layer-by-layer patching"))
    print(f"{'behaviour diff + logit lens + layer patching':<46} {required:6.2f} s (bound 60 s)")
    RESULTS.write_text(json.dumps({"run": str(args.run), "seconds": seconds, "totals": totals, "required_total": required}, indent=1))


if __name__ == "__main__":
    main()
