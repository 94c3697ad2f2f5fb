"""Activations: peak memory for 1,000 vs 10,000 texts, and throughput against a plain output_hidden_states loop.

Run:
    .venv/bin/python benchmarks/activations.py --run runs/demo          # demo policy, 1k vs 10k texts, 1 thread
    .venv/bin/python benchmarks/activations.py --run runs/demo --stage reward --texts 1000 10000 --speed-texts 2000

What it measures, on the run's checkpoint (`--stage`, final tag) and texts from its corpus (reviews with at least
two sentences, split after the first: prompt = first sentence, completion = the rest):

- memory: `collect_activations(folder, tokenizer, prompts, completions)` with its defaults (sites resid_pre,
  attn_out, mlp_out, resid_final; reads last and completion_mean; 64 texts a batch; 16 MB shards; backend auto,
  which boots the TransformerBridge) for each text count, each in a fresh subprocess, writing to a temporary
  folder. Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end (imports, model and texts
  included); "before" is the same figure just before the call (imports, model and all texts loaded). The same
  for the hooks backend, and for the plain loop below, which keeps every read in memory and grows with n.
- throughput, side by side in one process (same texts, same threads, each after a 64-text warm-up; `--repeats`
  round-robin runs, the best counts, as a shared machine's busy spells only ever slow a run down):
  plain: for each batch of 64 texts in input order, right-padded, `model(ids, attention_mask, position_ids,
  output_hidden_states=True)` (the model as loaded, its head included), then the last-token and completion-mean
  reads of every hidden state, kept in lists and concatenated at the end: the same numbers as ours' resid_pre +
  resid_final. ours: `collect_activations` with sites ("resid_pre", "resid_final") (the same content) and with
  its default sites (adding attn_out and mlp_out), bridge and hooks backends, shards written to disk and
  timed. Ours batches texts sorted by length within each shard (less padding) and never computes the vocab
  logits; untimed, its arrays are checked against the plain loop's.

The output of a full CPU run is in benchmarks/results/activations.txt.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 64


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def corpus_texts(run, n: int) -> tuple[list[str], list[str]]:
    """The first `n` corpus reviews of two sentences or more, split after the first sentence."""
    prompts, completions = [], []
    for record in run.data("corpus"):
        sentences = record["text"].split(". ")
        if len(sentences) < 2:
            continue
        prompts.append(sentences[0] + ".")
        completions.append(" " + ". ".join(sentences[1:]))
        if len(prompts) == n:
            return prompts, completions
    raise SystemExit(f"the run's corpus has only {len(prompts)} texts of two sentences or more; ask for {len(prompts)} or fewer")


def quiet() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------- the contestants


def plain_loop(model, tokenizer, prompts, completions) -> dict:
    """output_hidden_states in input order, reads kept in memory: -> {"last", "completion_mean"} (n, L+1, d_model)."""
    import numpy as np
    import torch

    from rlhf_lens import models

    parts = models.reward_input_parts(tokenizer, prompts, completions, models.context_length(model))
    last, mean = [], []
    with torch.no_grad():
        for start in range(0, len(parts), BATCH_SIZE):
            chunk = parts[start : start + BATCH_SIZE]
            ids, mask = models.pad_right([p + c for p, c in chunk], tokenizer.pad_token_id)
            out = model(input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask), output_hidden_states=True)
            hidden = torch.stack(out.hidden_states, 1)  # (batch, L+1, seq, d_model)
            rows = torch.arange(len(chunk))
            last.append(hidden[rows, :, mask.sum(1) - 1].numpy())
            for i, (p, c) in enumerate(chunk):
                mean.append(hidden[i, :, len(p) : len(p) + len(c)].mean(1).numpy())
    return {"last": np.concatenate(last), "completion_mean": np.stack(mean)}


def ours(folder, tokenizer, prompts, completions, *, sites, backend, out_dir):
    from rlhf_lens.analyses.probes.activations import collect_activations

    return collect_activations(folder, tokenizer, prompts, completions, sites=sites, backend=backend, out_dir=out_dir, quiet=True)


# --------------------------------------------------------------------------- memory (one subprocess per count)


def child(args) -> None:
    """Collect for `args.child_texts` texts with `args.child` and print one JSON line of figures."""
    import torch

    from rlhf_lens.analyses.probes.activations import DEFAULT_SITES
    from rlhf_lens.runs import Run

    torch.set_num_threads(args.threads)
    quiet()
    run = Run.open(args.run)
    checkpoint = run.checkpoint(args.stage)
    tokenizer = run.load_tokenizer(args.stage)
    prompts, completions = corpus_texts(run, max(args.texts))  # every child holds the same texts
    prompts, completions = prompts[: args.child_texts], completions[: args.child_texts]
    model = run.load_model(args.stage) if args.child == "plain" else None
    import transformer_lens  # noqa: F401 - imported before "before" in every child, like the model

    before = peak_rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        if args.child == "plain":
            plain_loop(model, tokenizer, prompts, completions)
            backend = "-"
        else:
            store = ours(checkpoint.path, tokenizer, prompts, completions, sites=DEFAULT_SITES, backend=args.child, out_dir=out_dir)
            backend = store.info["backend"]
    seconds = time.perf_counter() - start
    print(json.dumps({"before_mb": before, "peak_mb": peak_rss_mb(), "seconds": seconds, "backend": backend}))


def memory(args) -> list[dict]:
    rows = []
    for who in ("auto", "hooks", "plain"):
        for n in args.texts:
            command = [sys.executable, __file__, "--child", who, "--child-texts", str(n), "--run", str(args.run)]
            command += ["--stage", args.stage, "--threads", str(args.threads), "--texts", *map(str, args.texts)]
            out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode != 0:
                raise SystemExit(f"child {who} {n} failed:\n{out.stderr[-3000:]}")
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"who": who, "n": n, **figures})
            label = "ours" if who != "plain" else "plain"
            print(
                f"   {label:5s} {figures['backend']:6s} {n:>6,d} texts  peak RSS {figures['peak_mb']:7.1f} MB  "
                f"(before the call {figures['before_mb']:7.1f} MB, +{figures['peak_mb'] - figures['before_mb']:6.1f})  "
                f"{figures['seconds']:6.1f} s  {n / figures['seconds']:6.0f} texts/s",
                flush=True,
            )
    for who in ("auto", "hooks", "plain"):
        small, large = [next(r for r in rows if r["who"] == who and r["n"] == n) for n in (min(args.texts), max(args.texts))]
        grew = large["peak_mb"] - small["peak_mb"]
        label = f"ours ({small['backend']})" if who != "plain" else "plain loop"
        verdict = "" if who == "plain" else ("  (< 100 MB: bounded)" if grew < 100 else "  (>= 100 MB: NOT bounded)")
        print(f"   {label:14s} peak RSS {max(args.texts):,d} texts - {min(args.texts):,d} texts: {grew:+.1f} MB{verdict}")
    return rows


# --------------------------------------------------------------------------- throughput (one process)


def padded(lengths: list[int]) -> int:
    """Positions a forward pass runs over when these lengths are batched in this order, right-padded."""
    return sum(max(lengths[i : i + BATCH_SIZE]) * len(lengths[i : i + BATCH_SIZE]) for i in range(0, len(lengths), BATCH_SIZE))


def throughput(args) -> None:
    import numpy as np

    from rlhf_lens import models
    from rlhf_lens.analyses.probes.activations import DEFAULT_SITES
    from rlhf_lens.runs import Run

    run = Run.open(args.run)
    checkpoint = run.checkpoint(args.stage)
    tokenizer = run.load_tokenizer(args.stage)
    model = run.load_model(args.stage)
    prompts, completions = corpus_texts(run, args.speed_texts)
    lengths = [len(p) + len(c) for p, c in models.reward_input_parts(tokenizer, prompts, completions, models.context_length(model))]
    print(f"   {len(prompts):,d} texts, {sum(lengths):,d} tokens, length {min(lengths)}-{max(lengths)} (median {int(np.median(lengths))})")
    contestants = {"plain": (None, None)}
    for sites in (("resid_pre", "resid_final"), DEFAULT_SITES):
        for backend in ("bridge", "hooks"):
            contestants[f"ours {backend}, {'+'.join(sites)}"] = (sites, backend)

    shard_sizes = {}

    def once(key: str, prompts, completions) -> tuple[float, dict]:
        sites, backend = contestants[key]
        with tempfile.TemporaryDirectory() as out_dir:
            start = time.perf_counter()
            if sites is None:
                arrays = plain_loop(model, tokenizer, prompts, completions)
                seconds = time.perf_counter() - start
            else:
                store = ours(checkpoint.path, tokenizer, prompts, completions, sites=sites, backend=backend, out_dir=out_dir)
                seconds = time.perf_counter() - start
                arrays = {read: store.hidden_states(read) for read in ("last", "completion_mean")}
        if sites is not None:
            shard_sizes[key] = store.info["shard_size"]
        return seconds, arrays

    for key in contestants:  # warm-up
        once(key, prompts[:BATCH_SIZE], completions[:BATCH_SIZE])
    times, arrays = {key: [] for key in contestants}, {}
    for _ in range(args.repeats):  # round robin, so a busy spell on a shared machine hits every contestant alike
        for key in contestants:
            seconds, arrays[key] = once(key, prompts, completions)
            times[key].append(seconds)
    best = {key: min(values) for key, values in times.items()}
    ours_padded = []
    for shard_size in sorted(set(shard_sizes.values())):  # ours sorts by length within each shard
        by_length = [n for s in range(0, len(lengths), shard_size) for n in sorted(lengths[s : s + shard_size])]
        ours_padded.append(f"{padded(by_length):,d} in shards of {shard_size:,d} texts")
    print(
        f"   positions run, padding included: plain {padded(lengths):,d} (input order), ours {' / '.join(ours_padded)} (sorted by length)"
    )
    print("   the plain loop also runs the LM head over the vocab; ours stops at the final norm")
    for key, (sites, _) in contestants.items():
        note = "output_hidden_states, reads kept in memory" if sites is None else f"sites {', '.join(sites)}; shards on disk"
        runs = ", ".join(f"{t:.2f}" for t in times[key])
        print(f"   {key:52s} {best[key]:6.2f} s  {len(prompts) / best[key]:6.0f} texts/s  (best of {runs}; {note})", flush=True)
    for key in contestants:
        if key != "plain":
            diff = max(float(np.abs(arrays[key][r] - arrays["plain"][r]).max()) for r in ("last", "completion_mean"))
            print(f"   {key:52s} ratio {best['plain'] / best[key]:.1f}x  (plain time / ours; largest |difference| from plain {diff:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="a trained run (default runs/demo)")
    parser.add_argument("--stage", default="policy", help="the stage whose final checkpoint is read (default policy)")
    parser.add_argument("--texts", type=int, nargs=2, default=[1000, 10000], help="the two text counts of the memory test")
    parser.add_argument("--speed-texts", type=int, default=2000, help="texts of the throughput test (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each throughput contestant; the best counts (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--child", choices=("auto", "bridge", "hooks", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--child-texts", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.run / "run.json").is_file():
        raise SystemExit(f"no run at {args.run}; train one (rlhf-lens train training/<recipe>.toml --out runs/demo) or pass --run")
    if args.child:
        child(args)
        return

    import torch

    from rlhf_lens import models
    from rlhf_lens.runs import Run

    torch.set_num_threads(args.threads)
    quiet()
    run = Run.open(args.run)
    model = run.load_model(args.stage)
    config = model.config
    print(
        f"activations: device cpu ({platform.machine()} CPU), {args.threads} thread(s), torch {torch.__version__}, "
        f"transformer-lens {_version('transformer-lens')}, transformers {_version('transformers')}"
    )
    print(
        f"model: {args.run} stage {args.stage} (final): {type(model).__name__}, {config.num_hidden_layers} layers, "
        f"d_model {config.hidden_size}, vocab {config.vocab_size}, context {models.context_length(model)}; batch {BATCH_SIZE}"
    )
    del model
    print(f"== memory: {min(args.texts):,d} vs {max(args.texts):,d} texts, each in a fresh process", flush=True)
    memory(args)
    print(f"== throughput: side by side in one process, {args.speed_texts:,d} texts", flush=True)
    throughput(args)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


if __name__ == "__main__":
    main()
