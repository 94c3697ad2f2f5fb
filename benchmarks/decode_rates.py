"""Decoding tokens/s of `rlhf_lens.models.sample` against Hugging Face `generate` (eager, sampling), on the same
prompts, model and length limit (issue 14: the decoder's figure).

    .venv/bin/python benchmarks/decode_rates.py --run runs/quick [--batch 32] [--max-new-tokens 32] [--repeats 3]

Prints the median completion tokens per second of each (tokens up to and including EOS) and their ratio.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import statistics
import time
from pathlib import Path

import torch

from rlhf_lens.models import encode_prompts, pad_left, position_ids, sample
from rlhf_lens.runs import Run


def generated_tokens(rows: torch.Tensor, eos_id: int, pad_id: int) -> int:
    """Completion tokens of `generate`'s new columns (batch, T): up to and including each row's first EOS."""
    total = 0
    for row in rows.tolist():
        total += row.index(eos_id) + 1 if eos_id in row else sum(t != pad_id for t in row)
    return total


def decode_rates(run: Run, batch: int, max_new_tokens: int, repeats: int) -> dict[str, float]:
    """Median completion tokens/s of `models.sample` and of HF `generate(do_sample=True)` on `run`'s SFT policy."""
    model, tokenizer = run.load_model("sft"), run.load_tokenizer("sft")
    texts = [p["prompt"] for p in run.data("prompts")[:batch]]
    prompt_ids = encode_prompts(tokenizer, texts)
    ids, mask = pad_left(prompt_ids, tokenizer.pad_token_id)
    rates: dict[str, list[float]] = {"ours": [], "hf_generate": []}
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        ours = sample(model, tokenizer, prompt_ids, list(range(repeat, repeat + batch)), max_new_tokens=max_new_tokens)
        ours_rate = sum(len(c) for c in ours.completion_ids) / (time.perf_counter() - started)
        torch.manual_seed(repeat)
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), do_sample=True, top_k=0, top_p=1.0,
                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        hf_rate = generated_tokens(out[:, ids.shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id) / (time.perf_counter() - started)
        if repeat:  # the first is a warm-up
            rates["ours"].append(ours_rate)
            rates["hf_generate"].append(hf_rate)
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/quick"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates = decode_rates(Run.open(args.run), args.batch, args.max_new_tokens, args.repeats)
    print(f"{args.run}: {args.batch} prompts x <= {args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}")
    print(f"  ours (models.sample)  {rates['ours']:8.0f} tokens/s")
    print(f"  HF generate (eager)   {rates['hf_generate']:8.0f} tokens/s")
    print(f"  ours / HF             {rates['ours'] / rates['hf_generate']:8.2f}x")


if __name__ == "__main__":
    main()
