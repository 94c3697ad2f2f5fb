"""Integrated gradients of the reward: our batched, adaptive path against a plain per-text Captum loop.

Run:
    .venv/bin/python benchmarks/attribution_vs_captum.py                       # 256 texts, both sizes, CPU
    .venv/bin/python benchmarks/attribution_vs_captum.py --run /path/to/runs/demo --threads 1
    .venv/bin/python benchmarks/attribution_vs_captum.py --device cuda         # on a GPU

What it measures, per model size, side by side in one process (same texts, same threads):

- captum: per text, `LayerIntegratedGradients(forward, model.get_input_embeddings())` with Captum's defaults
  (n_steps=50, Gauss-Legendre, one batch of 50 steps), `return_convergence_delta=True`; the baseline is the
  pad id at every real token, and the forward scores at the last real token (from the attention mask) minus
  the reward offset, as `rlhf_lens.models.score_texts` does (HF's own pooling would score an all-pad
  baseline at position 0, see STACK-NOTES).
- ours: `rlhf_lens.analyses.attribution.reward_integrated_gradients(model, tokenizer, prompts, completions)`
  with its defaults (pad baseline, adaptive steps 16 -> 128 until |delta| <= 1% of |reward gap| + 1e-3).
- ours, 50 steps: the same with `n_steps=50`, Captum's count: what batching alone gains, and a check that
  both compute the same integral (their attributions then agree to float rounding).

All three are timed end to end (ours includes tokenisation and building its result table). Then, untimed:
completeness per text as |delta| / |reward(x) - reward(baseline)| (reward and baseline reward from one
batched forward), the share of texts within ours' tolerance (|delta| <= 0.01 * gap + 1e-3), and the largest
absolute difference between the two attributions of one token.

Models:
- demo: the demo run's reward model (`--run`, default runs/demo: GPT-2 4 layers, d_model 128, trained),
  its tokenizer, and 256 held-out texts (eval-split feedback records, prompt + chosen and prompt + rejected).
  Without that run (a fresh clone) a clearly labelled stand-in: a BPE tokenizer trained on the sentiment
  task's corpus, reviews of that corpus split into prompt and completion, and a random GPT-2 of the demo's
  size.
- large: a random GPT2ForSequenceClassification of 6 layers, d_model 256, 8 heads, same tokenizer and
  texts, at `initializer_range` `--init-range`, 0.1 by default. Why 0.1: share of held-out texts within the
  1% tolerance at 16 / 32 / 64 / 128 Gauss-Legendre steps on this model (48 texts; 24 at 0.2 and 0.3):
  0.02 and 0.05: 100% at 16 already (near-linear, the adaptive steps never act); 0.1: 90 / 100 / 100 / 100%,
  like the trained demo reward model (94 / 100 / 100 / 100%); 0.2: 0 / 0 / 0 / 8%; 0.3 (STACK-NOTES' value
  for a 2-layer d_model-32 toy): 0% at every step count (presumably saturated attention), so a comparison
  of completeness would compare two failures.

The output of a full CPU run (256 texts, both sizes, 1 thread) is in benchmarks/results/attribution_vs_captum.txt.
"""

from __future__ import annotations

from common import ROOT, format_table, quiet_libraries  # isort: skip (sets the environment first)

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf_lens import models
from rlhf_lens.analyses.attribution import reward_integrated_gradients

TOLERANCE = 0.01  # reward_integrated_gradients' default
ABS_TOLERANCE = 1e-3  # and its abs_tolerance
CAPTUM_STEPS = 50  # LayerIntegratedGradients' default, stated here only to print it
LARGE = {"n_layer": 6, "n_embd": 256, "n_head": 8}
DEMO = {"n_layer": 4, "n_embd": 128, "n_head": 4}


# --------------------------------------------------------------------------- models and texts


@dataclass
class Setup:
    """One model to attribute and what it reads."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    prompts: list[str]
    completions: list[str]
    label: str


def heldout_texts(run, n: int) -> tuple[list[str], list[str]]:
    """Distinct (prompt, completion) pairs from the eval-split feedback: chosen and rejected of each record."""
    seen, prompts, completions = set(), [], []
    for record in run.data("feedback"):
        if record.get("split") != "eval":
            continue
        for completion in (record["chosen"], record["rejected"]):
            if (record["prompt"], completion) not in seen:
                seen.add((record["prompt"], completion))
                prompts.append(record["prompt"])
                completions.append(completion)
        if len(prompts) >= n:
            break
    if len(prompts) < n:
        raise SystemExit(f"the run has only {len(prompts)} distinct held-out texts; pass --texts {len(prompts)} or fewer")
    return prompts[:n], completions[:n]


def task_texts(n: int) -> tuple[list[str], list[str]]:
    """Reviews of the sentiment task's corpus, split after the first sentence (as the unit tests do)."""
    from rlhf_lens.tasks import get_task

    prompts, completions = [], []
    for row in get_task("sentiment").corpus(n, seed=1):
        sentences = row["text"].split(". ")
        prompts.append(sentences[0].rstrip(".") + ".")
        completions.append(" " + ". ".join(sentences[1:]) if len(sentences) > 1 else " Fine.")
    return prompts, completions


def random_reward_model(tokenizer, shape: dict, *, context: int, init_range: float, seed: int = 0) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        initializer_range=init_range,
        num_labels=1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    return transformers.GPT2ForSequenceClassification(config).eval()


def setups(run_dir: Path, n: int, init_range: float, sizes: list[str]) -> list[Setup]:
    from rlhf_lens.runs import Run

    if (run_dir / "run.json").exists():
        run = Run.open(run_dir)
        tokenizer = run.load_tokenizer("reward")
        demo = run.load_model("reward").eval()
        prompts, completions = heldout_texts(run, n)
        source = f"{run_dir}: its reward model, tokenizer and {n} eval-split feedback texts (prompt + chosen / rejected)"
        demo_label = f"demo run's reward model (trained), {models.context_length(demo)} context"
    else:
        from rlhf_lens.tasks import get_task
        from rlhf_lens.training.build import train_tokenizer

        tokenizer = train_tokenizer([r["text"] for r in get_task("sentiment").corpus(3000, seed=0)], 800)
        prompts, completions = task_texts(n)
        demo = random_reward_model(tokenizer, DEMO, context=128, init_range=init_range)
        source = (
            f"STAND-IN: no demo run at {run_dir}; a BPE tokenizer (800) trained on the sentiment task's corpus, "
            f"{n} corpus reviews split into prompt + completion, random models"
        )
        demo_label = f"STAND-IN random GPT-2 of the demo's size, initializer_range {init_range}"
    print(f"texts and tokenizer: {source}")
    context = models.context_length(demo)
    large = random_reward_model(tokenizer, LARGE, context=context, init_range=init_range)
    out = []
    if "demo" in sizes:
        out.append(Setup("demo (4L d128)", demo, tokenizer, prompts, completions, demo_label))
    if "large" in sizes:
        label = f"random GPT2ForSequenceClassification 6L d256 8 heads, initializer_range {init_range}, {context} context"
        out.append(Setup("large (6L d256)", large, tokenizer, prompts, completions, label))
    return out


# --------------------------------------------------------------------------- the two contestants


class LastTokenReward(torch.nn.Module):
    """reward(input_ids) scored at the last real token from the attention mask, minus the offset."""

    def __init__(self, reward_model: torch.nn.Module):
        super().__init__()
        self.reward_model = reward_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.reward_model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=models.position_ids(attention_mask)
        ).last_hidden_state  # (batch, seq, d_model)
        last = attention_mask.sum(1) - 1
        return models.rewards_at(self.reward_model, hidden[torch.arange(len(hidden), device=hidden.device), last])


def captum_loop(model, seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[list[np.ndarray], np.ndarray]:
    """Plain per-text LayerIntegratedGradients with default settings -> (attributions per text, delta per text)."""
    from captum.attr import LayerIntegratedGradients

    lig = LayerIntegratedGradients(LastTokenReward(model), model.get_input_embeddings())
    attributions, deltas = [], []
    for seq in seqs:
        ids = torch.tensor([seq], device=device)  # (1, seq)
        mask = torch.ones_like(ids)
        baseline = torch.full_like(ids, pad_id)  # pad where the mask is 1 (the whole text)
        attr, delta = lig.attribute(ids, baselines=baseline, additional_forward_args=(mask,), return_convergence_delta=True)
        attributions.append(attr.sum(-1)[0].detach().double().cpu().numpy())
        deltas.append(float(delta[0]))
    return attributions, np.asarray(deltas)


def ours(model, setup: Setup, n_steps: int | None = None) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Our path (defaults: adaptive steps) -> (attributions per text, delta per text, steps per text)."""
    result = reward_integrated_gradients(model, setup.tokenizer, setup.prompts, setup.completions, n_steps=n_steps)
    attributions = [rows["attribution"].to_numpy() for _, rows in result.df.groupby("text", sort=True)]
    return attributions, result.texts["delta"].to_numpy(), result.texts["steps"].to_numpy()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- one model


@torch.no_grad()
def reward_gaps(model, seqs: list[list[int]], pad_id: int) -> np.ndarray:
    """|reward(x) - reward(pad baseline)| per text, scored at the last real token (batched, untimed)."""
    gaps = []
    for start in range(0, len(seqs), 64):
        chunk = seqs[start : start + 64]
        reward = models.score_rewards(model, chunk, pad_id)
        base = models.score_rewards(model, [[pad_id] * len(s) for s in chunk], pad_id)
        gaps.append((reward - base).abs().double().cpu().numpy())
    return np.concatenate(gaps)


def completeness(delta: np.ndarray, gap: np.ndarray) -> str:
    within = np.abs(delta) <= TOLERANCE * gap + ABS_TOLERANCE
    relative = np.abs(delta) / np.maximum(gap, 1e-12)
    q = np.quantile(relative, [0.5, 0.9])
    return f"within 1% tolerance {within.mean():6.1%}   median {q[0]:.2e}  p90 {q[1]:.2e}  max {relative.max():.2e}"


def compare(setup: Setup, device: torch.device) -> dict:
    model = setup.model.to(device).eval()
    tokenizer = setup.tokenizer
    pad_id = tokenizer.pad_token_id
    seqs = models.reward_input_ids(tokenizer, setup.prompts, setup.completions, models.context_length(model))
    lengths = np.asarray([len(s) for s in seqs])
    print(f"\n== {setup.name}: {setup.label}")
    print(f"   {len(seqs)} texts, {lengths.sum()} tokens, length {lengths.min()}-{lengths.max()} (median {np.median(lengths):.0f})")

    # Warm-up (untimed): first calls allocate and pick kernels.
    captum_loop(model, seqs[:2], pad_id, device)
    reward_integrated_gradients(model, tokenizer, setup.prompts[:2], setup.completions[:2])

    def timed(run):
        synchronize(device)
        start = time.perf_counter()
        out = run()
        synchronize(device)
        return out, time.perf_counter() - start

    (captum_attr, captum_delta), captum_s = timed(lambda: captum_loop(model, seqs, pad_id, device))
    (our_attr, our_delta, steps), ours_s = timed(lambda: ours(model, setup))
    (fixed_attr, fixed_delta, _), fixed_s = timed(lambda: ours(model, setup, CAPTUM_STEPS))

    gap = reward_gaps(model, seqs, pad_id)
    scale = max(float(np.abs(b).max()) for b in captum_attr)
    n = len(seqs)
    fixed = f"ours, {CAPTUM_STEPS} steps"
    lines = [
        ("captum", captum_s, f"{CAPTUM_STEPS} steps per text"),
        ("ours", ours_s, f"steps per text: mean {steps.mean():.1f}; {_step_counts(steps)}"),
        (fixed, fixed_s, "captum's steps: the gain of batching alone"),
    ]
    for label, seconds, note in lines:
        print(f"   {label:<15} {seconds:8.2f} s  {n / seconds:7.1f} texts/s  ({note})")
    print(f"   ratio {captum_s / ours_s:.1f}x  (captum time / ours; {fixed}: {captum_s / fixed_s:.1f}x)")
    print("   completeness, |delta| / |reward(x) - reward(baseline)| per text:")
    for label, delta in (("captum", captum_delta), ("ours", our_delta), (fixed, fixed_delta)):
        print(f"     {label:<15} {completeness(delta, gap)}")
    print(f"   largest |attribution difference| per token against captum (largest |attribution| {scale:.2e}):")
    print(f"     ours {_largest_difference(our_attr, captum_attr):.2e}, {fixed} {_largest_difference(fixed_attr, captum_attr):.2e}")
    return {"size": setup.name, "captum_s": captum_s, "ours_s": ours_s, "fixed_s": fixed_s}


def _largest_difference(ours_attr: list[np.ndarray], captum_attr: list[np.ndarray]) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(ours_attr, captum_attr, strict=True))


def _step_counts(steps: np.ndarray) -> str:
    values, counts = np.unique(steps, return_counts=True)
    return ", ".join(f"{c} at {v}" for v, c in zip(values, counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="the demo run (default runs/demo)")
    parser.add_argument("--sizes", nargs="+", choices=("demo", "large"), default=["demo", "large"])
    parser.add_argument("--init-range", type=float, default=0.1, help="initializer_range of the random models")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here; run with --device cpu")
    quiet_libraries()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import captum

    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU"
    print(f"$ python benchmarks/attribution_vs_captum.py {' '.join(sys.argv[1:])}")
    print(
        f"attribution_vs_captum: {args.texts} texts, device {args.device} ({hardware}), {args.threads} thread(s), "
        f"torch {torch.__version__}, captum {captum.__version__}"
    )
    rows = [compare(setup, device) for setup in setups(args.run, args.texts, args.init_range, args.sizes)]
    for row in rows:
        row["ratio"], row["fixed_ratio"] = row["captum_s"] / row["ours_s"], row["captum_s"] / row["fixed_s"]
    columns = [
        ("size", "size", "{}"),
        ("captum_s", "captum s", "{:.2f}"),
        ("ours_s", "ours s", "{:.2f}"),
        ("ratio", "ratio", "{:.1f}x"),
        ("fixed_s", f"ours {CAPTUM_STEPS} steps s", "{:.2f}"),
        ("fixed_ratio", "ratio", "{:.1f}x"),
    ]
    print("\n" + format_table(rows, columns))


if __name__ == "__main__":
    main()
