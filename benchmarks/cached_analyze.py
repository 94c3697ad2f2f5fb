"""A fully cached `rlhf-lens analyze`: wall time and peak memory on a run, and on a copy with 100x its evaluation data
(issue 23: under 5 s for the 100x run).

    .venv/bin/python benchmarks/cached_analyze.py runs/demo [--scale 100] [--work runs/bench-cached] [--baseline-src DIR]

Each figure is one `rlhf-lens analyze RUN --quiet` in a fresh process (so nothing is memoised in advance); peak memory
is that process's maximum resident set (os.wait4). The script first fills each run's cache (an analyze that computes
whatever is missing; minutes on the 100x copy), then times `--repeats` cached runs and keeps the fastest.

The 100x copy repeats every row of each evaluation shard `--scale` times under new prompt ids (one evaluation of
12,800 prompts where the demo has 128), each copy's completions and log-probabilities made distinct so the files grow
as the rows do: the shards every policy analysis reads, fingerprints and checks.

`--baseline-src DIR`: a checkout of an earlier revision (e.g. `git worktree add /tmp/before <commit>`) timed the same
way in the same run, with its own cache entries, so the two revisions compare side by side.
Writes benchmarks/results/cached_analyze.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "cached_analyze.json"
REPO = Path(__file__).resolve().parents[1]


def timed(run: Path, src: Path, repeats: int) -> dict:
    """Fill the cache, then the fastest of `repeats` cached analyses (seconds, its peak MB, the status counts)."""
    fill_seconds, _, _ = _analyze_measured(run, src)
    best = None
    for _ in range(repeats):
        seconds, peak, out = _analyze_measured(run, src)
        if best is None or seconds < best[0]:
            best = (seconds, peak, out.splitlines()[0])
    return {"fill_seconds": round(fill_seconds, 1), "cached_seconds": round(best[0], 2), "peak_mb": round(best[1]), "summary": best[2]}


IMPORTS = "from rlhf_lens.cli import main; from rlhf_lens.analyses import all_analyses; all_analyses()"
"""What every analyze pays before it reads a file: the libraries and the registry (timed alone for context)."""


def imports_seconds(src: Path, repeats: int) -> float:
    """The fastest of `repeats` fresh processes that only import what `analyze` imports."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(src)}
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], cwd=src, env=env, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def _analyze_measured(run: Path, src: Path) -> tuple[float, float, str]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(src), "TQDM_DISABLE": "1"}
    command = [
        sys.executable,
        "-c",
        "import sys; from rlhf_lens.cli import main; sys.exit(main(sys.argv[1:]))",
        "analyze",
        str(run),
        "--quiet",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"analyze {run} with {src} failed ({process.returncode}):\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout


def scaled_copy(source: Path, target: Path, scale: int) -> Path:
    """A copy of run `source` at `target` whose evaluation shards hold every row `scale` times under new prompt ids."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("analyses", "report.html"))
    shards = sorted(target.glob("logs/rollouts/*/eval/step-*.parquet"))
    if not shards:
        raise SystemExit(f"{source} has no evaluation shards (logs/rollouts/<stage>/eval/): train a policy stage first")
    for shard in shards:
        df = pq.read_table(shard).to_pandas()
        n_prompts = int(df["prompt_id"].max()) + 1 if df["prompt_id"].dtype.kind in "iu" else None
        copies = []
        for k in range(scale):  # each copy distinct (texts and log-probabilities), so the bytes grow as the rows do
            copy = df.copy()
            copy["prompt_id"] = copy["prompt_id"] + k * n_prompts if n_prompts is not None else copy["prompt_id"].astype(str) + f"#{k}"
            copy["sample_id"] = (
                copy["sample_id"] + k * len(df) if copy["sample_id"].dtype.kind in "iu" else copy["sample_id"].astype(str) + f"#{k}"
            )
            if k:
                copy["completion"] = copy["completion"] + f" {k}"
                for column in ("logprobs", "ref_logprobs", "kl_per_token"):
                    if column in copy:
                        copy[column] = [np.asarray(v) * (1 + 1e-6 * k) for v in copy[column]]
            copies.append(copy)
        import pandas as pd

        pq.write_table(pa.Table.from_pandas(pd.concat(copies, ignore_index=True), preserve_index=False), shard)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-cached")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="a checkout of an earlier revision, timed beside this one")
    args = parser.parse_args()
    args.run, args.work = args.run.absolute(), args.work.absolute()

    big = scaled_copy(args.run, args.work, args.scale)
    eval_bytes = {run: sum(p.stat().st_size for p in run.glob("logs/rollouts/*/eval/*.parquet")) for run in (args.run, big)}
    sources = {"this revision": REPO} | ({"baseline": args.baseline_src.absolute()} if args.baseline_src else {})
    rows = []
    for label, src in sources.items():
        imports = imports_seconds(src, args.repeats)
        print(f"{label:<14} imports alone {imports:6.2f} s", flush=True)
        for run in (args.run, big):
            figures = timed(run, src, args.repeats)
            figures["beyond_imports_seconds"] = round(figures["cached_seconds"] - imports, 2)
            row = {
                "revision": label,
                "run": str(run),
                "eval_shard_mb": round(eval_bytes[run] / 1e6, 1),
                "imports_seconds": round(imports, 2),
            }
            rows.append(row | figures)
            print(
                f"{label:<14} {run.name:<16} eval shards {eval_bytes[run] / 1e6:7.1f} MB   cached analyze {figures['cached_seconds']:6.2f} s"
                f" ({figures['beyond_imports_seconds']:5.2f} s beyond imports)   peak {figures['peak_mb']:6.0f} MB"
                f"   (filling the cache took {figures['fill_seconds']} s)",
                flush=True,
            )
    if len(sources) == 2:
        for run in (args.run, big):
            ours, base = (next(r for r in rows if r["revision"] == lab and r["run"] == str(run)) for lab in sources)
            print(
                f"{run.name:<16} baseline / this revision: {base['cached_seconds'] / ours['cached_seconds']:.1f}x time "
                f"({base['beyond_imports_seconds'] / ours['beyond_imports_seconds']:.1f}x beyond imports), "
                f"{base['peak_mb'] / ours['peak_mb']:.1f}x peak memory"
            )
    RESULTS.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
