"""Every learning outcome the tests assert, over several seeds and thread counts.

The same seed trains differently on another CPU (other float kernels, other thread counts), so a
learning test must hold with margin across seeds, not for one initialisation. For each (seed,
threads) this trains the shared run (training/sentiment_quick.toml with that seed) and every stage
the tests train from it, measures each figure exactly as the tests do (`tests/learning.py`), and
prints each figure's minimum over the sweep against the test's threshold.

    .venv/bin/python benchmarks/seed_sweep.py --seeds 0 1 2 3 4 --threads 1 2
    .venv/bin/python benchmarks/seed_sweep.py --only grpo generative   # a subset, reusing trained shared runs

Work goes to runs/seed_sweep/seed-S-threads-T/ (resumable: finished measures are kept in
figures.json and skipped; --again re-measures). Results: benchmarks/results/seed_sweep.json.
One-thread configurations run side by side, as many as there are cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "seed_sweep.json"


def worker(folder: Path, seed: int, threads: int, only: list[str], again: bool) -> None:
    """Measure in this process (its thread count fixed before torch starts working)."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from tests import learning

    figures_file = folder / "figures.json"
    done = json.loads(figures_file.read_text()) if figures_file.is_file() else {}
    shared = folder / "shared"
    if not (shared / "run.json").is_file() or any(s["status"] != "done" for s in json.loads((shared / "run.json").read_text())["stages"]):
        shutil.rmtree(shared, ignore_errors=True)
        start = time.perf_counter()
        learning.train_quick(shared, seed=seed)
        done["_seconds/train_shared_run"] = time.perf_counter() - start
    for name in only:
        if name in done.get("_measured", []) and not again:
            continue
        work = folder / "work" / name
        shutil.rmtree(work, ignore_errors=True)
        start = time.perf_counter()
        measured = learning.MEASURES[name](shared, work, seed)
        done |= measured.figures | {f"_seconds/{name}": time.perf_counter() - start}
        done["_measured"] = sorted(set(done.get("_measured", [])) | {name})
        figures_file.write_text(json.dumps(done, indent=1))
        shutil.rmtree(work, ignore_errors=True)  # checkpoints are large; the figures are what we keep
        print(f"seed {seed} threads {threads} {name}: {measured.figures}", flush=True)


def launch(out: Path, seed: int, threads: int, only: list[str], again: bool) -> int:
    folder = out / f"seed-{seed}-threads-{threads}"
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, __file__, "--worker", str(folder), "--seeds", str(seed), "--threads", str(threads), "--only", *only]
    command += ["--again"] if again else []
    with open(folder / "log.txt", "a") as log:
        return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode


def summarise(out: Path, previous: dict | None = None) -> dict:
    """Every figure of every configuration, and each figure's minimum margin against its bound. Figures of `previous`
    (the results file as it was) are kept unless a configuration's figures.json measured them again, so a sweep of
    a subset (--only) adds to the results instead of replacing them."""
    sys.path.insert(0, str(ROOT))
    from tests.learning import BOUNDS

    configs = {name: dict(figures) for name, figures in (previous or {}).get("configs", {}).items()}
    for figures_file in sorted(out.glob("seed-*-threads-*/figures.json")):
        measured = {k: v for k, v in json.loads(figures_file.read_text()).items() if not k.startswith("_measured")}
        configs[figures_file.parent.name] = configs.get(figures_file.parent.name, {}) | measured
    table = {}
    for name, bound in BOUNDS.items():
        values = {config: figures[name] for config, figures in configs.items() if name in figures}
        if not values:
            continue
        worst_config = min(values, key=lambda c: bound.margin(values[c]))
        table[name] = {
            "bound": f"{bound.op} {bound.value}",
            "worst": values[worst_config],
            "worst_config": worst_config,
            "holds_everywhere": all(bound.holds(v) for v in values.values()),
            "n": len(values),
            "values": values,
        }
    return {"configs": configs, "figures": table}


def print_table(summary: dict) -> None:
    print(f"\n{'figure':30} {'bound':>8} {'worst':>9} {'n':>3}  worst at                 all configurations")
    for name, row in summary["figures"].items():
        flag = "" if row["holds_everywhere"] else "   <-- FAILS"
        values = " ".join(f"{v:.3f}" for v in row["values"].values())
        print(f"{name:30} {row['bound']:>8} {row['worst']:9.3f} {row['n']:3}  {row['worst_config']:24} {values}{flag}")


def markdown_table(summary: dict) -> str:
    """The table for tests/robustness.md: each figure's bound, its worst value and every configuration's."""
    configs = sorted(
        {c for row in summary["figures"].values() for c in row["values"]}, key=lambda c: (int(c.split("-")[3]), int(c.split("-")[1]))
    )
    short = [c.replace("seed-", "s").replace("-threads-", "/t") for c in configs]
    lines = ["| figure | bound | worst | " + " | ".join(short) + " |", "|---|---|---|" + "---|" * len(configs)]
    for name, row in summary["figures"].items():
        cells = [f"{row['values'][c]:.3f}" if c in row["values"] else "" for c in configs]
        worst = f"**{row['worst']:.3f}**" + ("" if row["holds_everywhere"] else " FAILS")
        lines.append(f"| `{name}` | {row['bound']} | {worst} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.learning import MEASURES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", default=list(MEASURES), choices=list(MEASURES))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "seed_sweep")
    parser.add_argument("--again", action="store_true", help="re-measure figures already in figures.json")
    parser.add_argument("--jobs", type=int, help="configurations at once (default: cores / threads)")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite the results from the figures measured so far")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.seeds[0], args.threads[0], args.only, args.again)

    cores = os.cpu_count() or 1
    for threads in [] if args.summary_only else sorted(args.threads):
        with ThreadPoolExecutor(args.jobs or max(1, cores // threads)) as pool:
            codes = list(pool.map(lambda seed, threads=threads: launch(args.out, seed, threads, args.only, args.again), args.seeds))
        for seed, code in zip(args.seeds, codes):
            if code:
                print(f"seed {seed} threads {threads} failed (exit {code}); see {args.out}/seed-{seed}-threads-{threads}/log.txt")
    summary = summarise(args.out, json.loads(RESULTS.read_text()) if RESULTS.is_file() else None)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")
    RESULTS.with_suffix(".md").write_text(markdown_table(summary))
    print_table(summary)
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
