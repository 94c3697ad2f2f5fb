"""Our policy trainers (GRPO, DPO) against TRL's `GRPOTrainer` and `DPOTrainer`, side by side in one run.

Run:
    .venv/bin/python benchmarks/policy_vs_trl.py                  # both sizes, GRPO + DPO (~9 min on 2 cores)
    .venv/bin/python benchmarks/policy_vs_trl.py --quick          # smoke run (~40 s)
    .venv/bin/python benchmarks/policy_vs_trl.py --sizes demo --only grpo --grpo-steps 40
    benchmarks/gpu_policy.sh                                      # GRPO on CUDA in bf16, GPT-2-small sized

What it measures, per model size (demo: GPT-2 4 layers, d_model 128, 4 heads; large: 6 layers,
d_model 256, 8 heads; gpt2small: 12 layers, d_model 768, 12 heads; context 96 for all):

1. Setup (not timed): our pipeline pretrains a base model, SFTs it on the sentiment task, and trains a
   Bradley-Terry reward model on simulated comparisons of SFT samples (centred: the checkpoint's
   `config.reward_offset` is subtracted from its scores). The SFT checkpoint is the starting policy
   and the reference of every trainer below; the reward checkpoint is GRPO's reward; the run's
   train-split comparisons are DPO's preference pairs.
2. GRPO. Ours: a policy-only recipe (`algorithm = "grpo"`, init_from / reward_from the setup run)
   run through `load_recipe` + `train`, and the whole `train()` call is timed. That call also
   generates the (tiny) task data, loads the policy, the reference and the reward model, evaluates
   the policy on `eval_prompts` eval prompts at the start and at the end of the stage, writes the
   run, a rollout shard and the final checkpoint: all of that is charged to us, which favours TRL.
   TRL: `GRPOTrainer` from the same SFT checkpoint on the same train prompts (our run's
   data/prompts.jsonl, BOS + prompt as ours encodes them), with a Python reward function that
   scores with the same reward checkpoint through the same function (`rlhf_lens.models.score_texts`,
   offset subtracted). Only `trainer.train()` is timed: model loading, reference-model creation and
   dataset preparation in `__init__` are excluded, which favours TRL again. Both take B prompts x G
   completions per optimizer step (TRL: per_device_train_batch_size = generation_batch_size = B*G,
   num_generations = G, one gradient-accumulation step, num_iterations = 1), at most T new tokens,
   temperature 1, no top-k/top-p, the same learning rate, beta (k3 KL to the reference in the loss),
   clip epsilon 0.2, gradient clip 1.0, no weight decay, no warmup, cosine to 10%, the per-sequence
   token-mean loss (TRL `loss_type="grpo"`), group-std advantages, no gradient checkpointing (TRL's
   configs default it on), fp32 on CPU (bf16 autocast on CUDA with --bf16), no vLLM.
   Reported: steps/s over the timed call; completion tokens/s (completion tokens sampled during
   the training steps, EOS included, over the timed call; ours from metrics.jsonl
   `completions/mean_length` x B x G, TRL from the completion ids its reward function receives,
   cross-checked against its logged `completions/mean_length`); and "steady" steps/s, the rate of
   steps 2 .. S-1 from per-step wall-clock stamps (ours: metrics.jsonl `time`; TRL: a callback's
   `on_step_end`), which leaves out start-up, the first step, our evaluations and the final save.
3. DPO. Ours: a policy-only recipe (`algorithm = "dpo"`) from the SFT checkpoint, fed the setup run's
   train-split comparisons as a JSONL file; the whole `train()` call is timed (it also evaluates the
   implicit reward on the 20% of prompts our stage holds out, at the start and at the end, and samples
   the eval prompts twice). TRL: `DPOTrainer` (sigmoid loss, beta 0.1, same learning rate and
   schedule, max_length 96, reference log-probs computed on the fly, no gradient checkpointing) on
   exactly the pairs our stage trains on (same held-out split), prompt = BOS + prompt text,
   completions as text (TRL appends EOS like ours). Only `trainer.train()` is timed. Reported:
   steps/s over the timed call and steady steps/s as above; and how often TRL's token ids equal ours.

Ratios are ours / TRL in steps/s (higher is better for us). The machine may be shared with other
work, so only ratios measured side by side in one run are meant to be quoted. Prints a GRPO and a
DPO table and writes the rows to benchmarks/results/policy_vs_trl.json (or --out).
"""

from __future__ import annotations

from common import CONTEXT, QUICK_SETUP, ROOT, SIZES, format_table, quiet_libraries, recipe_header, write_feedback  # isort: skip (sets the environment first)
import argparse
import contextlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import common
import numpy as np
import torch

from rlhf_lens.models import encode_prompts, load_tokenizer, score_texts
from rlhf_lens.runs import Run, load_hf_folder
from rlhf_lens.training.config import load_recipe
from rlhf_lens.training.pipeline import train
from rlhf_lens.training.policy.dpo import Pairs as DPOPairs
from rlhf_lens.training.policy.dpo import preference_pairs
from rlhf_lens.training.policy.stage import POLICY_SEED_OFFSET

RESULTS = ROOT / "benchmarks" / "results" / "policy_vs_trl.json"
ALGORITHMS = ("grpo", "dpo")


@dataclass(frozen=True)
class Settings:
    """What both trainers share, plus how big the (untimed) setup run is."""

    grpo_steps: int = 20
    prompts_per_step: int = 8
    """B: GRPO prompts per optimizer step."""
    group_size: int = 4
    """G: GRPO completions per prompt."""
    max_new_tokens: int = 32
    """T: GRPO completion length limit."""
    beta: float = 0.04
    """GRPO KL coefficient (our kl_coef, TRL's beta)."""
    dpo_steps: int = 30
    dpo_batch_size: int = 16
    dpo_beta: float = 0.1
    lr: float = 1e-5
    eval_prompts: int = 8
    """Eval prompts our stages sample at their start and end evaluations."""
    max_length: int = CONTEXT
    seed: int = 0
    threads: int = 1
    setup_threads: int = 1
    device: str = "cpu"
    bf16: bool = False
    only: str = "grpo,dpo"
    quick: bool = False

    @property
    def algorithms(self) -> list[str]:
        return [a for a in ALGORITHMS if a in self.only.split(",")]


# --------------------------------------------------------------------------- setup (not timed)


def setup_overrides(size: str, settings: Settings) -> list[str]:
    """Overrides of the quick sentiment recipe: model size, shorter base/SFT, a cheaper reward stage."""
    if settings.quick:
        stages = QUICK_SETUP
    elif size == "gpt2small":
        # Our base, SFT and reward stages run on CPU even on a GPU machine (only policy stages take a device), and an
        # 86M-parameter step there takes seconds: keep them short. The policy is weak, which does not matter for speed.
        stages = [
            "stages.base.steps=100",
            "stages.base.batch_size=8",
            "stages.base.warmup_steps=10",
            "stages.base.eval_every=0",
            "stages.sft.steps=40",
            "stages.sft.batch_size=8",
            "stages.sft.eval_every=0",
            "stages.sft.eval_samples=8",
            "stages.reward.feedback_prompts=32",
            "stages.reward.epochs=1",
            "data.corpus_size=3000",
            "data.sft_size=1000",
            "data.train_prompts=256",
            "data.eval_prompts=16",
        ]
    else:
        stages = ["stages.base.steps=150", "stages.sft.steps=60", "stages.reward.epochs=1", "stages.reward.feedback_prompts=256"]
    return stages + [f"seed={settings.seed}"]


def setup_run(size: str, settings: Settings, workdir: Path) -> Path:
    """Our base, SFT and reward stages (not timed), on all setup threads."""
    torch.set_num_threads(settings.setup_threads)
    out = common.setup_run(size, setup_overrides(size, settings), workdir)
    torch.set_num_threads(settings.threads)
    return out


def synchronize(settings: Settings) -> None:
    if settings.device == "cuda":
        torch.cuda.synchronize()


class StepClock:
    """A transformers callback that stamps the wall-clock time at the end of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        stamps = self.stamps = []

        class _Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                stamps.append(time.time())

        self.callback = _Clock()


def steady_rate(stamps: list[float]) -> float:
    """Steps/s of steps 2 .. S-1 from end-of-step stamps (needs S >= 3)."""
    if len(stamps) < 3:
        return float("nan")
    return (len(stamps) - 2) / (stamps[-2] - stamps[0])


# --------------------------------------------------------------------------- our trainer


def policy_recipe(stage_lines: list[str], task_options: dict, settings: Settings, train_prompts: int) -> str:
    """A policy-only recipe."""
    stage = "\n".join(stage_lines)
    return (
        recipe_header("policy-vs-trl", settings.seed, task_options, train_prompts=train_prompts, eval_prompts=settings.eval_prompts)
        + f"""
[[stages]]
kind = "policy"
{stage}
device = {json.dumps(settings.device)}
bf16 = {"true" if settings.bf16 else "false"}
"""
    )


def grpo_stage(setup: Path, settings: Settings) -> list[str]:
    return [
        'algorithm = "grpo"',
        f"init_from = {json.dumps(f'{setup}:sft/final')}",
        f"reward_from = {json.dumps(f'{setup}:reward/final')}",
        f"steps = {settings.grpo_steps}",
        f"batch_size = {settings.prompts_per_step}",
        f"group_size = {settings.group_size}",
        f"max_new_tokens = {settings.max_new_tokens}",
        f"lr = {settings.lr}",
        f"kl_coef = {settings.beta}",
        "epochs = 1",
        "minibatches = 1",
        "normalize_reward = false",
        "eval_every = 0",
        f"eval_prompts = {settings.eval_prompts}",
        "log_every = 0",
        "temperature = 1.0",
        "missing_eos_penalty = 0.0",
    ]


def dpo_stage(setup: Path, feedback: Path, settings: Settings) -> list[str]:
    return [
        'algorithm = "dpo"',
        f"init_from = {json.dumps(f'{setup}:sft/final')}",
        f"feedback = {json.dumps(str(feedback))}",
        f"steps = {settings.dpo_steps}",
        f"batch_size = {settings.dpo_batch_size}",
        f"lr = {settings.lr}",
        f"dpo_beta = {settings.dpo_beta}",
        f"max_new_tokens = {settings.max_new_tokens}",
        "eval_every = 0",
        f"eval_prompts = {settings.eval_prompts}",
        "log_every = 0",
    ]


def run_ours(name: str, recipe_text: str, settings: Settings, workdir: Path) -> tuple[float, Run]:
    """Time our whole `train()` of a policy-only recipe; return (seconds, the run)."""
    recipe = workdir / f"{name}.toml"
    recipe.write_text(recipe_text)
    config = load_recipe(recipe)
    torch.manual_seed(settings.seed)
    synchronize(settings)
    start = time.perf_counter()
    out = train(config, workdir / f"ours-{name}", quiet=True)
    synchronize(settings)
    return time.perf_counter() - start, Run.open(out)


# --------------------------------------------------------------------------- TRL


def trl_common(settings: Settings, output_dir: Path) -> dict:
    """TrainingArguments both TRL trainers share: our optimizer, schedule, precision and no extras."""
    return dict(
        output_dir=str(output_dir),
        learning_rate=settings.lr,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},  # ours: cosine to 10%
        gradient_accumulation_steps=1,
        gradient_checkpointing=False,
        disable_dropout=True,
        use_cpu=settings.device == "cpu",
        bf16=settings.bf16,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        seed=settings.seed,
    )


def load_trl_policy(sft_folder: Path, settings: Settings):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(sft_folder)
    model = AutoModelForCausalLM.from_pretrained(str(sft_folder), dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def trl_grpo(sft_folder: Path, reward_folder: Path, prompts: list[str], settings: Settings, workdir: Path) -> dict:
    """Time `GRPOTrainer.train()`; return seconds, stamps, completion tokens per step and an input check."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load_trl_policy(sft_folder, settings)
    tokenizer.padding_side = "left"
    bos = tokenizer.bos_token
    device = torch.device("cuda" if settings.device == "cuda" else "cpu")
    reward_model = load_hf_folder(reward_folder, "score", num_labels=1).to(device).eval()
    reward_tokenizer = load_tokenizer(reward_folder)
    reward_model.config.pad_token_id = reward_tokenizer.pad_token_id
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if settings.device == "cuda" and settings.bf16 else contextlib.nullcontext
    )
    tokens_per_call: list[int] = []

    def reward_model_score(prompts, completions, completion_ids=None, **kwargs):
        texts = [p[len(bos) :] if p.startswith(bos) else p for p in prompts]  # score_texts adds BOS itself
        tokens_per_call.append(sum(len(ids) for ids in completion_ids))
        with autocast():
            return score_texts(reward_model, reward_tokenizer, texts, completions).float().cpu().tolist()

    n = settings.prompts_per_step * settings.group_size
    config = GRPOConfig(
        **trl_common(settings, workdir / "trl-grpo"),
        max_steps=settings.grpo_steps,
        per_device_train_batch_size=n,
        num_generations=settings.group_size,
        generation_batch_size=n,
        num_iterations=1,
        max_completion_length=settings.max_new_tokens,
        beta=settings.beta,
        epsilon=0.2,
        loss_type="grpo",
        scale_rewards="group",
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        logging_steps=settings.grpo_steps,
        log_completions=False,
        mask_truncated_completions=False,
    )
    dataset = Dataset.from_list([{"prompt": bos + p} for p in prompts])
    clock = StepClock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_model_score,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock.callback],
    )
    trainer.remove_callback(PrinterCallback)
    same = [tokenizer(bos + p)["input_ids"] == ids for p, ids in zip(prompts, encode_prompts(tokenizer, prompts))]
    torch.manual_seed(settings.seed)
    synchronize(settings)
    start = time.perf_counter()
    trainer.train()
    synchronize(settings)
    seconds = time.perf_counter() - start
    logged = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {
        "seconds": seconds,
        "stamps": clock.stamps,
        "tokens_per_step": tokens_per_call,
        "logged_mean_length": float(np.mean(logged)) if logged else float("nan"),
        "prompt_ids_equal_ours": float(np.mean(same)),
        "ref_model": trainer.ref_model is not None,
    }


def trl_dpo(sft_folder: Path, records: list[dict], settings: Settings, workdir: Path) -> dict:
    """Time `DPOTrainer.train()`; return seconds, stamps and how TRL's token ids compare with ours."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_trl_policy(sft_folder, settings)
    bos = tokenizer.bos_token
    config = DPOConfig(
        **trl_common(settings, workdir / "trl-dpo"),
        max_steps=settings.dpo_steps,
        per_device_train_batch_size=settings.dpo_batch_size,
        beta=settings.dpo_beta,
        loss_type=["sigmoid"],
        max_length=settings.max_length,
        precompute_ref_log_probs=False,
        logging_steps=10**6,
    )
    dataset = Dataset.from_list([{"prompt": bos + r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in records])
    clock = StepClock()
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[clock.callback])
    trainer.remove_callback(PrinterCallback)
    check = dpo_input_check(trainer.train_dataset, tokenizer, records)
    torch.manual_seed(settings.seed)
    synchronize(settings)
    start = time.perf_counter()
    trainer.train()
    synchronize(settings)
    return {"seconds": time.perf_counter() - start, "stamps": clock.stamps, **check}


def dpo_input_check(dataset, tokenizer, records: list[dict]) -> dict:
    """Pairs TRL kept, and how often its prompt / chosen / rejected ids equal ours (`rlhf_lens.training.policy.dpo.Pairs`)."""
    ours = DPOPairs.of(records, tokenizer, 10**6)  # untruncated, like the ids TRL builds
    by_key = {(r["prompt"], r["chosen"], r["rejected"]): i for i, r in enumerate(records)}
    same = []
    for row, r in zip(dataset, records):  # TRL keeps the order (it drops only pairs whose prompt fills max_length)
        i = by_key[(r["prompt"], r["chosen"], r["rejected"])]
        same.append(
            row["prompt_ids"] == ours.prompt_ids[i]
            and row["chosen_ids"] == ours.chosen_ids[i]
            and row["rejected_ids"] == ours.rejected_ids[i]
        )
    return {"trl_pairs": len(dataset), "trl_ids_equal_ours": float(np.mean(same)) if same else float("nan")}


# --------------------------------------------------------------------------- one size


def bench_grpo(size: str, setup: Path, settings: Settings, workdir: Path) -> dict:
    task_options = Run.open(setup).config["task"]["options"]
    setup_prompts = [p for p in Run.open(setup).data("prompts") if p["split"] == "train"]
    recipe = policy_recipe(grpo_stage(setup, settings), task_options, settings, train_prompts=len(setup_prompts))
    ours_s, run = run_ours("grpo", recipe, settings, workdir)
    metrics = run.metrics("policy").sort_values("step")
    per_step = settings.prompts_per_step * settings.group_size
    ours_tokens = metrics["completions/mean_length"].to_numpy() * per_step  # (S,)
    ours_stamps = metrics["time"].tolist()
    print(f"[{size}] grpo ours: {ours_s:.1f}s for {settings.grpo_steps} steps", flush=True)

    prompts = [p["prompt"] for p in run.data("prompts") if p["split"] == "train"]  # the prompts our stage sampled from
    trl = trl_grpo(Path(f"{setup}/checkpoints/sft/final"), Path(f"{setup}/checkpoints/reward/final"), prompts, settings, workdir)
    print(f"[{size}] grpo trl: {trl['seconds']:.1f}s for {settings.grpo_steps} steps", flush=True)
    trl_tokens = np.asarray(trl["tokens_per_step"], dtype=float)

    def window_tokens(tokens):  # tokens of steps 2 .. S-1
        return float(tokens[1:-1].sum())

    ours_steady, trl_steady = steady_rate(ours_stamps), steady_rate(trl["stamps"])
    row = {
        "size": size,
        **SIZES[size],
        "params": sum(p.numel() for p in run.load_model("policy").parameters()),
        "steps": settings.grpo_steps,
        "completions_per_step": per_step,
        "ours_s": ours_s,
        "trl_s": trl["seconds"],
        "ours_steps_per_s": settings.grpo_steps / ours_s,
        "trl_steps_per_s": settings.grpo_steps / trl["seconds"],
        "ours_tokens_per_s": float(ours_tokens.sum()) / ours_s,
        "trl_tokens_per_s": float(trl_tokens.sum()) / trl["seconds"],
        "ours_mean_length": float(ours_tokens.mean() / per_step),
        "trl_mean_length": float(trl_tokens.mean() / per_step),
        "trl_logged_mean_length": trl["logged_mean_length"],
        "ours_steady_steps_per_s": ours_steady,
        "trl_steady_steps_per_s": trl_steady,
        "ours_steady_tokens_per_s": window_tokens(ours_tokens) / (ours_stamps[-2] - ours_stamps[0])
        if len(ours_stamps) >= 3
        else float("nan"),
        "trl_steady_tokens_per_s": window_tokens(trl_tokens) / (trl["stamps"][-2] - trl["stamps"][0])
        if len(trl["stamps"]) >= 3
        else float("nan"),
        "trl_steps_done": len(trl["stamps"]),
        "trl_reward_calls": len(trl["tokens_per_step"]),
        "trl_ref_model": trl["ref_model"],
        "train_prompts": len(prompts),
        "trl_prompt_ids_equal_ours": trl["prompt_ids_equal_ours"],
        "ours_stage_s": run.manifest["results"]["policy"]["seconds"],
        "ours_eval_score_start": run.manifest["results"]["policy"].get("start_eval/score_mean"),
        "ours_eval_score_end": run.manifest["results"]["policy"].get("eval/score_mean"),
    }
    row |= phase_and_decode_figures(setup, settings)
    row["ours_over_trl"] = row["ours_steps_per_s"] / row["trl_steps_per_s"]
    row["ours_over_trl_tokens"] = row["ours_tokens_per_s"] / row["trl_tokens_per_s"]
    row["ours_over_trl_steady"] = ours_steady / trl_steady
    return row


def phase_and_decode_figures(setup: Path, settings: Settings) -> dict:
    """Our GRPO step by phase (`policy_phases.py`) and decoding tokens/s of the lean decoder, `models.sample` and HF
    `generate` (`decode_rates.py`), on the setup run's SFT policy and reward model at this benchmark's step shape (CPU)."""
    from decode_rates import decode_rates
    from policy_phases import phase_times

    run = Run.open(setup)
    phases = phase_times(run, settings.prompts_per_step, settings.group_size, settings.max_new_tokens, repeats=3)
    rates = decode_rates(run, settings.prompts_per_step * settings.group_size, settings.max_new_tokens, repeats=3)
    return {
        **{f"phase_ms/{k}": v * 1000 for k, v in phases.items()},
        "decode_tok_s/ours": rates["lean"],
        "decode_tok_s/models_sample": rates["models_sample"],
        "decode_tok_s/hf_generate": rates["hf_generate"],
    }


def bench_dpo(size: str, setup: Path, settings: Settings, workdir: Path) -> dict:
    comparisons = [r for r in Run.open(setup).data("feedback") if r["kind"] == "comparison" and r["split"] == "train"]
    feedback = write_feedback(comparisons, workdir / "train_comparisons.jsonl")
    task_options = Run.open(setup).config["task"]["options"]
    recipe = policy_recipe(dpo_stage(setup, feedback, settings), task_options, settings, train_prompts=16)
    ours_s, run = run_ours("dpo", recipe, settings, workdir)
    print(f"[{size}] dpo ours: {ours_s:.1f}s for {settings.dpo_steps} steps", flush=True)
    # exactly the pairs our stage trained on: its own split of the file (seed + POLICY_SEED_OFFSET)
    config = load_recipe(workdir / "dpo.toml")
    trained, heldout = preference_pairs(config.stages[0], [], config.seed + POLICY_SEED_OFFSET)
    results = run.manifest["results"]["policy"]
    if results["train_pairs"] != len(trained):
        raise RuntimeError(f"our DPO stage trained on {results['train_pairs']} pairs but the reproduced split has {len(trained)}")
    trl = trl_dpo(Path(f"{setup}/checkpoints/sft/final"), trained, settings, workdir)
    print(f"[{size}] dpo trl: {trl['seconds']:.1f}s for {settings.dpo_steps} steps", flush=True)
    ours_stamps = run.metrics("policy").sort_values("step")["time"].tolist()
    ours_steady, trl_steady = steady_rate(ours_stamps), steady_rate(trl["stamps"])
    row = {
        "size": size,
        **SIZES[size],
        "steps": settings.dpo_steps,
        "batch_size": settings.dpo_batch_size,
        "ours_s": ours_s,
        "trl_s": trl["seconds"],
        "ours_stage_s": results["seconds"],
        "ours_steps_per_s": settings.dpo_steps / ours_s,
        "trl_steps_per_s": settings.dpo_steps / trl["seconds"],
        "ours_steady_steps_per_s": ours_steady,
        "trl_steady_steps_per_s": trl_steady,
        "train_pairs": len(trained),
        "heldout_pairs": len(heldout),
        "setup_train_comparisons": len(comparisons),
        "trl_pairs": trl["trl_pairs"],
        "trl_ids_equal_ours": trl["trl_ids_equal_ours"],
        "trl_steps_done": len(trl["stamps"]),
    }
    row["ours_over_trl"] = row["ours_steps_per_s"] / row["trl_steps_per_s"]
    row["ours_over_trl_steady"] = ours_steady / trl_steady
    return row


def bench_size(size: str, settings: Settings, workdir: Path) -> dict:
    setup = setup_run(size, settings, workdir)
    rows = {}
    if "grpo" in settings.algorithms:
        rows["grpo"] = bench_grpo(size, setup, settings, workdir)
    if "dpo" in settings.algorithms:
        rows["dpo"] = bench_dpo(size, setup, settings, workdir)
    return rows


# --------------------------------------------------------------------------- report

GRPO_COLUMNS = [
    ("size", "size", "{}"),
    ("ours_s", "ours s", "{:.1f}"),
    ("trl_s", "trl s", "{:.1f}"),
    ("ours_steps_per_s", "ours st/s", "{:.3f}"),
    ("trl_steps_per_s", "trl st/s", "{:.3f}"),
    ("ours_over_trl", "ours/trl", "{:.2f}x"),
    ("ours_tokens_per_s", "ours tok/s", "{:.0f}"),
    ("trl_tokens_per_s", "trl tok/s", "{:.0f}"),
    ("ours_over_trl_tokens", "tok ours/trl", "{:.2f}x"),
    ("ours_over_trl_steady", "steady ours/trl", "{:.2f}x"),
    ("ours_mean_length", "len ours", "{:.1f}"),
    ("trl_mean_length", "len trl", "{:.1f}"),
]
DPO_COLUMNS = [
    ("size", "size", "{}"),
    ("ours_s", "ours s", "{:.1f}"),
    ("trl_s", "trl s", "{:.1f}"),
    ("ours_steps_per_s", "ours st/s", "{:.3f}"),
    ("trl_steps_per_s", "trl st/s", "{:.3f}"),
    ("ours_over_trl", "ours/trl", "{:.2f}x"),
    ("ours_steady_steps_per_s", "steady ours", "{:.3f}"),
    ("trl_steady_steps_per_s", "steady trl", "{:.3f}"),
    ("ours_over_trl_steady", "steady ours/trl", "{:.2f}x"),
]


def save_results(rows: dict[str, list[dict]], settings: Settings, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    versions = {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "trl": __import__("trl").__version__}
    if settings.device == "cuda":
        versions["cuda_device"] = torch.cuda.get_device_name(0)
    path.write_text(json.dumps({"settings": asdict(settings), "versions": versions, **rows}, indent=2, default=str) + "\n")


def parse_args() -> tuple[list[str], Settings, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="demo,large", help="comma-separated, from: " + ", ".join(SIZES))
    parser.add_argument("--only", default="grpo,dpo", help="comma-separated algorithms to benchmark: grpo, dpo (default both)")
    parser.add_argument("--grpo-steps", type=int, default=None, help="GRPO optimizer steps (default 20, 4 with --quick)")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="GRPO prompts per step (B)")
    parser.add_argument("--group-size", type=int, default=4, help="GRPO completions per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="GRPO completion length limit (T)")
    parser.add_argument("--beta", type=float, default=0.04, help="GRPO KL coefficient, both trainers (0 drops TRL's reference model)")
    parser.add_argument("--dpo-steps", type=int, default=None, help="DPO optimizer steps (default 30, 4 with --quick)")
    parser.add_argument("--dpo-batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the timed trainers (the setup run is CPU-only)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA for both trainers")
    parser.add_argument("--quick", action="store_true", help="tiny setup runs and 4 steps each: a smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the timed trainers (default 1: on a shared 2-core machine two threads "
        "oversubscribe the cores and make every op several times slower and noisier)",
    )
    parser.add_argument("--setup-threads", type=int, default=None, help="torch threads of the untimed setup run (default --threads)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default benchmarks/results/policy_vs_trl.json)")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    only = [a.strip() for a in args.only.split(",") if a.strip()]
    if not only or any(a not in ALGORITHMS for a in only):
        parser.error(f"--only takes a comma-separated subset of {list(ALGORITHMS)}, got {args.only!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.bf16 and args.device != "cuda":
        parser.error("--bf16 needs --device cuda (on CPU both trainers run fp32)")
    grpo_steps = args.grpo_steps if args.grpo_steps is not None else (4 if args.quick else 20)
    dpo_steps = args.dpo_steps if args.dpo_steps is not None else (4 if args.quick else 30)
    settings = Settings(
        grpo_steps=grpo_steps,
        prompts_per_step=args.prompts_per_step,
        group_size=args.group_size,
        max_new_tokens=args.max_new_tokens,
        beta=args.beta,
        dpo_steps=dpo_steps,
        dpo_batch_size=args.dpo_batch_size,
        lr=args.lr,
        threads=args.threads,
        setup_threads=args.setup_threads or args.threads,
        device=args.device,
        bf16=args.bf16,
        only=",".join(only),
        quick=args.quick,
    )
    return sizes, settings, args.out


def main() -> None:
    sizes, settings, out = parse_args()
    torch.set_num_threads(settings.threads)
    quiet_libraries()
    print(f"settings: {asdict(settings)}", flush=True)
    rows: dict[str, list[dict]] = {a: [] for a in settings.algorithms}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"policy_vs_trl_{size}_") as tmp:
            for algorithm, row in bench_size(size, settings, Path(tmp)).items():
                rows[algorithm].append(row)
    if rows.get("grpo"):
        print(
            f"\nGRPO ({settings.prompts_per_step} prompts x {settings.group_size} completions x <= {settings.max_new_tokens} tokens "
            f"per step, {settings.grpo_steps} steps, beta {settings.beta}, {settings.device}{' bf16' if settings.bf16 else ''})"
        )
        print(format_table(rows["grpo"], GRPO_COLUMNS))
        for row in rows["grpo"]:
            print(
                f"  {row['size']}: {row['params']:,} params; steady (steps 2..S-1) steps/s ours {row['ours_steady_steps_per_s']:.3f}, "
                f"trl {row['trl_steady_steps_per_s']:.3f}; steady tok/s ours {row['ours_steady_tokens_per_s']:.0f}, "
                f"trl {row['trl_steady_tokens_per_s']:.0f}; TRL logged mean length {row['trl_logged_mean_length']:.1f}; "
                f"TRL prompt ids == ours for {row['trl_prompt_ids_equal_ours']:.0%} of {row['train_prompts']} prompts"
            )
            phases = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("phase_ms/")}
            total = sum(phases.values())
            print(f"  {row['size']}: our step by phase: " + ", ".join(f"{k} {v:.0f} ms ({v / total:.0%})" for k, v in phases.items()))
            print(
                f"  {row['size']}: decoding {row['decode_tok_s/ours']:.0f} tokens/s with the lean decoder against "
                f"{row['decode_tok_s/hf_generate']:.0f} HF generate (eager sampling): "
                f"{row['decode_tok_s/ours'] / row['decode_tok_s/hf_generate']:.2f}x ({row['decode_tok_s/models_sample']:.0f} models.sample)"
            )
    if rows.get("dpo"):
        print(
            f"\nDPO ({settings.dpo_batch_size} pairs per step, {settings.dpo_steps} steps, beta {settings.dpo_beta}, "
            f"{settings.device}{' bf16' if settings.bf16 else ''})"
        )
        print(format_table(rows["dpo"], DPO_COLUMNS))
        for row in rows["dpo"]:
            print(
                f"  {row['size']}: {row['train_pairs']} train pairs ({row['heldout_pairs']} held out by our stage); TRL kept "
                f"{row['trl_pairs']}, its ids == ours for {row['trl_ids_equal_ours']:.1%} of pairs"
            )
    save_results(rows, settings, out)
    print(f"wrote {out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
