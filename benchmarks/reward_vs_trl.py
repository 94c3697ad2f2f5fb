"""Our ranking reward trainer against TRL's `RewardTrainer`, side by side in one run.

Run:
    .venv/bin/python benchmarks/reward_vs_trl.py                 # both sizes, 2 epochs (~10-15 min on 2 cores)
    .venv/bin/python benchmarks/reward_vs_trl.py --quick         # smoke run (~2 min)
    .venv/bin/python benchmarks/reward_vs_trl.py --sizes demo --epochs 3

What it measures, per model size (demo: GPT-2 4 layers, d_model 128, 4 heads; large: 6 layers,
d_model 256, 8 heads):

1. Setup (not timed): our pipeline pretrains a base model and SFTs it on the sentiment task, then
   its reward stage samples the SFT policy and lets the simulated labelers compare the samples.
   That run's train-split comparisons are the training pairs, its eval-split comparisons (distinct
   prompts) the held-out pairs.
2. Ours: a reward-only recipe (`reward_kind = "ranking"`, Bradley-Terry) starting from the SFT
   checkpoint, fed the training pairs as a JSONL file, run through `load_recipe` + `train`. The
   whole `train()` call is timed: it also writes the run, task data, the end-of-training
   evaluation and the checkpoint, so it overstates our training time. Our stage scores each batch
   packed (`rlhf_lens.packing`: a pair's prompt once, then both completions, rows without padding;
   the same rewards as a padded batch to float rounding), where TRL pads chosen and rejected to the
   longest sequence of the batch. Twice: with shuffled pairs (the default) and with
   `group_by_prompt = true` (batches of whole prompts, each completion scored once per step: fewer
   tokens again, but fewer distinct prompts per step).
3. TRL: `RewardTrainer` from the same SFT checkpoint on exactly the pairs our stage trained on
   (our stage holds out a sliver of prompts itself), with the same epochs, batch size, learning
   rate, warmup, cosine-to-10% schedule, gradient clip and max length, fp32, no dropout, no
   gradient checkpointing (TRL 1.x turns it on by default; it costs time to save memory). Only
   `trainer.train()` is timed: TRL's dataset tokenisation in `__init__` is excluded, which
   favours TRL.
4. Both models are scored with the same function (`rlhf_lens.models.score_texts`, BOS + prompt +
   completion) on the held-out pairs: accuracy against the labels, and against the task oracle's
   ordering (`gold_accuracy`).

Steps 2-4 run for each of `--seeds` training seeds on the same pairs (default 3). Prints a table
(mean seconds, trl/ours as the ratio of mean times, accuracies as mean ± sd over seeds; the same for the
grouped batches) and writes the rows, with every seed's figures, to benchmarks/results/reward_vs_trl.json.
"""

from __future__ import annotations

from common import CONTEXT, QUICK_SETUP, ROOT, SIZES, format_table, quiet_libraries, recipe_header, setup_run, write_feedback  # isort: skip (sets the environment first)

import argparse
import json
import math
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rlhf_lens.models import reward_input_ids, score_texts
from rlhf_lens.runs import Run
from rlhf_lens.tasks import get_task
from rlhf_lens.tasks.agreement import gold_accuracy, pairwise_accuracy
from rlhf_lens.training.config import load_recipe
from rlhf_lens.training.data import is_heldout_prompt
from rlhf_lens.training.pipeline import train

RESULTS = ROOT / "benchmarks" / "results" / "reward_vs_trl.json"
REWARD_SIZES = ("demo", "large")
REWARD_SEED_OFFSET = 2  # the pipeline's reward stage uses seed + 2 (batch order, held-out split)


@dataclass(frozen=True)
class Settings:
    """What both trainers share, plus how big the (untimed) setup run is."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 10
    max_length: int = CONTEXT
    seed: int = 0
    threads: int = 1
    quick: bool = False
    seeds: int = 1
    """Training seeds per size (same pairs; seed, seed + 1, ...): accuracies are reported as mean and sd."""


@dataclass
class Pairs:
    train: list[dict]
    heldout: list[dict]


# --------------------------------------------------------------------------- setup (not timed)


def setup_overrides(settings: Settings) -> list[str]:
    """Overrides of the quick sentiment recipe: shorter base/SFT, a cheap reward stage."""
    stages = QUICK_SETUP if settings.quick else ["stages.base.steps=150", "stages.sft.steps=60", "stages.reward.epochs=1"]
    return stages + [f"seed={settings.seed}"]


def comparison_pairs(run: Path) -> Pairs:
    """Train- and eval-split comparisons of a run's feedback; eval pairs deduplicated."""
    records = [r for r in Run.open(run).data("feedback") if r["kind"] == "comparison"]
    heldout = {(r["prompt"], r["chosen"], r["rejected"]): r for r in records if r["split"] == "eval"}
    return Pairs(train=[r for r in records if r["split"] == "train"], heldout=list(heldout.values()))


# --------------------------------------------------------------------------- our trainer


def heldout_fraction_for(records: list[dict], seed: int) -> float:
    """Smallest of 1%, 2%, 4%, ... at which our stage holds out at least one prompt (it refuses zero)."""
    prompts = {r["prompt"] for r in records}
    fraction = 0.01
    while not any(is_heldout_prompt(p, fraction, seed + REWARD_SEED_OFFSET) for p in prompts):
        fraction *= 2
    return fraction


def reward_recipe(sft_spec: str, feedback: Path, fraction: float, task_options: dict, settings: Settings) -> str:
    """A reward-only recipe."""
    return (
        recipe_header("reward-vs-trl", settings.seed, task_options, train_prompts=16, eval_prompts=8)
        + f"""
[[stages]]
kind = "reward"
reward_kind = "ranking"
init_from = {json.dumps(sft_spec)}
feedback = {json.dumps(str(feedback))}
epochs = {settings.epochs}
batch_size = {settings.batch_size}
lr = {settings.lr}
warmup_steps = {settings.warmup_steps}
heldout_fraction = {fraction}
center = false
"""
    )


def train_ours(setup: Path, pairs: Pairs, settings: Settings, workdir: Path, *, group_by_prompt: bool = False):
    """Time our whole reward-only `train()`; return (seconds, model, tokenizer, pairs it trained on)."""
    workdir = workdir / ("grouped" if group_by_prompt else "shuffled")
    workdir.mkdir(parents=True, exist_ok=True)
    feedback = write_feedback(pairs.train, workdir / "train_pairs.jsonl")
    fraction = heldout_fraction_for(pairs.train, settings.seed)
    task_options = Run.open(setup).config["task"]["options"]
    recipe = workdir / "reward_only.toml"
    recipe.write_text(
        reward_recipe(f"{setup}:sft/final", feedback, fraction, task_options, settings)
        + f"group_by_prompt = {str(group_by_prompt).lower()}\n"
    )
    config = load_recipe(recipe)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    out = train(config, workdir / "ours", quiet=True)
    seconds = time.perf_counter() - start
    run = Run.open(out)
    trained = [r for r in run.data("feedback") if r["split"] == "train"]
    return seconds, run.load_model("reward"), run.load_tokenizer("reward"), trained


# --------------------------------------------------------------------------- TRL


def trl_dataset(records: list[dict], bos: str):
    """Text pairs in RewardTrainer's implicit-prompt format; BOS + prompt + completion like ours."""
    from datasets import Dataset

    return Dataset.from_list([{"chosen": bos + r["prompt"] + r["chosen"], "rejected": bos + r["prompt"] + r["rejected"]} for r in records])


def trl_config(settings: Settings, output_dir: Path):
    from trl import RewardConfig

    return RewardConfig(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.lr,
        warmup_steps=settings.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},  # ours: cosine to 10%
        max_length=settings.max_length,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        disable_dropout=True,
        center_rewards_coefficient=None,
        seed=settings.seed,
        gradient_checkpointing=False,  # TRL 1.x turns it on by default; it trades time for memory we do not need here
    )


def trl_input_check(dataset, tokenizer, records: list[dict], context: int) -> dict:
    """How TRL's token ids compare with ours (BOS + prompt + completion): pairs kept, and ids equal up to its EOS."""
    prompts = [r["prompt"] for r in records] * 2
    completions = [r["chosen"] for r in records] + [r["rejected"] for r in records]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = reward_input_ids(tokenizer, prompts, completions, 10**6)
    by_text = {tokenizer.bos_token + p + c: ids for p, c, ids in zip(prompts, completions, ours)}
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    same = [by_text[row[side][: -len(eos)]] + [eos_id] == row[f"{side}_ids"] for row in dataset for side in ("chosen", "rejected")]
    return {
        "trl_pairs": len(dataset),
        "trl_dropped_pairs": len(records) - len(dataset),
        "ours_truncated_seqs": sum(len(ids) > context for ids in ours),
        "trl_ids_equal_ours_plus_eos": float(np.mean(same)) if same else float("nan"),
    }


def train_trl(sft_folder: Path, records: list[dict], settings: Settings, workdir: Path):
    """Time `RewardTrainer.train()`; return (seconds, model, tokenizer, input check)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback
    from trl import RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(sft_folder))
    torch.manual_seed(settings.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(sft_folder), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model,
        args=trl_config(settings, workdir / "trl"),
        train_dataset=trl_dataset(records, tokenizer.bos_token),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line would interrupt our output
    check = trl_input_check(trainer.train_dataset, tokenizer, records, settings.max_length)
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, trainer.model.eval(), tokenizer, check


# --------------------------------------------------------------------------- evaluation and report


def heldout_accuracy(model, tokenizer, pairs: list[dict], gold_fn) -> tuple[float, float]:
    """(accuracy against the labels, accuracy against the oracle's ordering) on held-out pairs."""
    prompts = [r["prompt"] for r in pairs]
    chosen, rejected = [r["chosen"] for r in pairs], [r["rejected"] for r in pairs]
    r_chosen = score_texts(model, tokenizer, prompts, chosen).numpy()
    r_rejected = score_texts(model, tokenizer, prompts, rejected).numpy()
    g_chosen, g_rejected = np.asarray(gold_fn(prompts, chosen)), np.asarray(gold_fn(prompts, rejected))
    return pairwise_accuracy(r_chosen, r_rejected), gold_accuracy(r_chosen, r_rejected, g_chosen, g_rejected)


def bench_seed(setup: Path, pairs: Pairs, settings: Settings, workdir: Path, gold_fn) -> dict:
    """Both trainers (and our grouped batches) on the same pairs with one training seed; timings and accuracies."""
    workdir = workdir / f"seed{settings.seed}"
    ours_s, ours_model, ours_tok, trained = train_ours(setup, pairs, settings, workdir)
    print(f"  seed {settings.seed}: ours {ours_s:.1f}s on {len(trained)} pairs", flush=True)
    grouped_s, grouped_model, grouped_tok, _ = train_ours(setup, pairs, settings, workdir, group_by_prompt=True)
    print(f"  seed {settings.seed}: ours, batches of whole prompts {grouped_s:.1f}s", flush=True)
    trl_s, trl_model, trl_tok, check = train_trl(Run.open(setup).checkpoint("sft").path, trained, settings, workdir)
    print(f"  seed {settings.seed}: trl {trl_s:.1f}s on {check['trl_pairs']} pairs", flush=True)
    row = {
        "ours_s": ours_s,
        "grouped_s": grouped_s,
        "trl_s": trl_s,
        "train_pairs": len(trained),
        "params": sum(p.numel() for p in ours_model.parameters()),
        **check,
    }
    for name, model, tokenizer in (("ours", ours_model, ours_tok), ("grouped", grouped_model, grouped_tok), ("trl", trl_model, trl_tok)):
        row[f"acc_{name}"], row[f"gold_{name}"] = heldout_accuracy(model, tokenizer, pairs.heldout, gold_fn)
    return row


def bench_size(size: str, settings: Settings, workdir: Path) -> dict:
    """Setup once, then both trainers on the same pairs for each training seed; one result row of means."""
    setup = setup_run(size, setup_overrides(settings), workdir)
    pairs = comparison_pairs(setup)
    task_config = Run.open(setup).config["task"]
    task = get_task(task_config["name"], **task_config["options"])
    print(f"[{size}]", flush=True)
    per_seed = [
        bench_seed(setup, pairs, replace(settings, seed=settings.seed + k), workdir, task.gold_reward) for k in range(settings.seeds)
    ]
    row = {"size": size, **SIZES[size], "per_seed": per_seed, "heldout_pairs": len(pairs.heldout), "setup_train_pairs": len(pairs.train)}
    for key, value in per_seed[0].items():
        values = [r[key] for r in per_seed]
        row[key] = float(np.mean(values)) if isinstance(value, float) else value
        if key.startswith(("acc_", "gold_")):
            row[key + "_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            row[key + "_pm"] = f"{row[key]:.3f}" + (f" ± {row[key + '_sd']:.3f}" if len(values) > 1 else "")
    row["trl_over_ours"] = row["trl_s"] / row["ours_s"]
    row["trl_over_grouped"] = row["trl_s"] / row["grouped_s"]
    row["steps_ours"] = settings.epochs * math.ceil(row["train_pairs"] / settings.batch_size)
    return row


COLUMNS = [
    ("size", "size", "{}"),
    ("ours_s", "ours s", "{:.1f}"),
    ("trl_s", "trl s", "{:.1f}"),
    ("trl_over_ours", "trl/ours", "{:.2f}x"),
    ("acc_ours_pm", "acc ours", "{}"),
    ("acc_trl_pm", "acc trl", "{}"),
    ("gold_ours_pm", "gold ours", "{}"),
    ("gold_trl_pm", "gold trl", "{}"),
    ("grouped_s", "grouped s", "{:.1f}"),
    ("trl_over_grouped", "trl/grouped", "{:.2f}x"),
    ("acc_grouped_pm", "acc grouped", "{}"),
    ("gold_grouped_pm", "gold grouped", "{}"),
]


def save_results(rows: list[dict], settings: Settings) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    versions = {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "trl": __import__("trl").__version__}
    RESULTS.write_text(json.dumps({"settings": asdict(settings), "versions": versions, "rows": rows}, indent=2) + "\n")


def parse_args() -> tuple[list[str], Settings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="demo,large", help="comma-separated, from: " + ", ".join(REWARD_SIZES))
    parser.add_argument("--epochs", type=int, default=None, help="epochs for both trainers (default 2, 1 with --quick)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--quick", action="store_true", help="tiny setup runs and 1 epoch: a smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per size, on the same pairs (default 3)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two threads oversubscribe the cores and "
        "make every op several times slower and noisier)",
    )
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in REWARD_SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(REWARD_SIZES)}")
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 2)
    return sizes, Settings(
        epochs=epochs, batch_size=args.batch_size, lr=args.lr, threads=args.threads, quick=args.quick, seeds=1 if args.quick else args.seeds
    )


def main() -> None:
    sizes, settings = parse_args()
    torch.set_num_threads(settings.threads)
    quiet_libraries()
    print(f"settings: {asdict(settings)}", flush=True)
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"reward_vs_trl_{size}_") as tmp:
            rows.append(bench_size(size, settings, Path(tmp)))
    print()
    print(format_table(rows, COLUMNS))
    for row in rows:
        print(
            f"  {row['size']}: {row['params']:,} params, {row['train_pairs']} train pairs ({row['steps_ours']} steps ours), "
            f"{row['heldout_pairs']} held-out pairs; TRL kept {row['trl_pairs']} (dropped {row['trl_dropped_pairs']} over max_length), "
            f"TRL ids == ours + EOS for {row['trl_ids_equal_ours_plus_eos']:.1%} of sequences"
        )
    save_results(rows, settings)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
