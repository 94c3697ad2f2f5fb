"""Decoding tokens/s: the lean decoder (`rlhf_lens.decoding.sample`) against `models.sample` (the HF forward with its
cache) and Hugging Face `generate` (eager, sampling), on the same prompts, seeds and length limit (issue 14).

    .venv/bin/python benchmarks/decode_rates.py --run runs/quick [--batch 32] [--max-new-tokens 32] [--repeats 3]
    .venv/bin/python benchmarks/decode_rates.py --random gpt2small --device cuda --bf16 --batch 512 --max-new-tokens 64

With --run: the run's SFT policy on its first prompts (rows end at EOS). With --random SIZE: a random GPT-2 of a
benchmark size (benchmarks/common.py SIZES, vocab 413, context 128) on random 16-token prompts; its rows never end,
so every sampler decodes the whole batch for every step. --bf16 casts the model to bf16 (for all three).
Prints the median completion tokens per second of each (tokens up to and including EOS) and the ratios.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import statistics
import time
from pathlib import Path

import torch

from rlhf_lens import decoding, models
from rlhf_lens.runs import Run

RANDOM_VOCAB = 413
SAMPLERS = ("lean", "models_sample", "hf_generate")


class IdTokenizer:
    """The ids-only tokenizer a random model needs: EOS = pad = 0, no text."""

    eos_token_id = pad_token_id = 0

    def batch_decode(self, rows, skip_special_tokens=True):
        return [""] * len(rows)


def random_model(size: str, device: str, bf16: bool):
    """A random GPT-2 of a benchmark size whose EOS logit is pushed down, so that no row ends early."""
    import transformers
    from common import SIZES  # benchmarks/ is on sys.path when run as a script

    shape = SIZES[size]
    config = transformers.GPT2Config(
        vocab_size=RANDOM_VOCAB, n_positions=128, n_embd=shape["d_model"], n_layer=shape["n_layer"], n_head=shape["n_head"],
        bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight[0] = -10.0 * model.lm_head.weight.abs().max()
    return model.to(device, torch.bfloat16 if bf16 else torch.float32)


def generated_tokens(rows: torch.Tensor, eos_id: int, pad_id: int) -> int:
    """Completion tokens of `generate`'s new columns (batch, T): up to and including each row's first EOS."""
    total = 0
    for row in rows.tolist():
        total += row.index(eos_id) + 1 if eos_id in row else sum(t != pad_id for t in row)
    return total


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_tokens(fn, device) -> tuple[int, float]:
    synchronize(device)
    started = time.perf_counter()
    tokens = fn()
    synchronize(device)
    return tokens, time.perf_counter() - started


def decode_rates_of(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, repeats: int) -> dict[str, float]:
    """Median completion tokens/s of each sampler (SAMPLERS) on the same prompts; seeds differ between repeats."""
    device = next(model.parameters()).device
    batch = len(prompt_ids)
    ids, mask = models.pad_left(prompt_ids, tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)

    def ours(sampler, repeat):
        drawn = sampler(model, tokenizer, prompt_ids, list(range(repeat, repeat + batch)), max_new_tokens=max_new_tokens)
        return sum(len(c) for c in drawn.completion_ids)

    def hf_generate(repeat):
        torch.manual_seed(repeat)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, position_ids=models.position_ids(mask), do_sample=True, top_k=0, top_p=1.0,
                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        return generated_tokens(out[:, ids.shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id)

    runs = {
        "lean": lambda r: ours(decoding.sample, r),
        "models_sample": lambda r: ours(models.sample, r),
        "hf_generate": hf_generate,
    }
    rates: dict[str, list[float]] = {name: [] for name in SAMPLERS}
    for repeat in range(repeats + 1):
        for name in SAMPLERS:  # interleaved, so that drift on a shared machine hits all three alike
            tokens, seconds = _timed_tokens(lambda name=name, repeat=repeat: runs[name](repeat), device)
            if repeat:  # the first round is a warm-up
                rates[name].append(tokens / seconds)
    return {name: statistics.median(values) for name, values in rates.items()}


def decode_rates(run: Run, batch: int, max_new_tokens: int, repeats: int) -> dict[str, float]:
    """`decode_rates_of` on `run`'s SFT policy and its first `batch` prompts (CPU)."""
    model, tokenizer = run.load_model("sft"), run.load_tokenizer("sft")
    texts = [p["prompt"] for p in run.data("prompts")[:batch]]
    return decode_rates_of(model, tokenizer, models.encode_prompts(tokenizer, texts), max_new_tokens, repeats)


def print_rates(rates: dict[str, float], title: str) -> None:
    print(title)
    print(f"  lean decoder (decoding.sample)   {rates['lean']:10.0f} tokens/s")
    print(f"  HF forward (models.sample)       {rates['models_sample']:10.0f} tokens/s")
    print(f"  HF generate (eager sampling)     {rates['hf_generate']:10.0f} tokens/s")
    print(f"  lean / HF generate               {rates['lean'] / rates['hf_generate']:10.2f}x")
    print(f"  lean / models.sample             {rates['lean'] / rates['models_sample']:10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/quick"))
    parser.add_argument("--random", choices=("demo", "large", "gpt2small"), help="a random GPT-2 of this size instead of --run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.random:
        model, tokenizer = random_model(args.random, args.device, args.bf16), IdTokenizer()
        generator = torch.Generator().manual_seed(0)
        prompt_ids = [[0] + torch.randint(1, RANDOM_VOCAB, (15,), generator=generator).tolist() for _ in range(args.batch)]
        rates = decode_rates_of(model, tokenizer, prompt_ids, args.max_new_tokens, args.repeats)
        source = f"random {args.random} GPT-2 ({args.device}{', bf16' if args.bf16 else ''})"
    else:
        rates = decode_rates(Run.open(args.run), args.batch, args.max_new_tokens, args.repeats)
        source = f"{args.run} SFT policy (cpu)"
    print_rates(rates, f"{source}: {args.batch} prompts x <= {args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
