"""Where an online policy step spends its time, phase by phase (issue 14: what to speed up next).

    .venv/bin/python benchmarks/policy_phases.py --run runs/quick [--prompts 8] [--group 4] [--repeats 5]

On the run's SFT policy and reward model, one GRPO step of grpo_quick.toml's shape (8 prompts x 4 completions, 32
new tokens) split into its phases, each timed on its own: sampling (the lean decoder, `rlhf_lens.decoding.sample`, keeping the drawn tokens'
log-probabilities), the reference's packed pass, the reward model, and the update (one epoch, one minibatch:
forward and backward of the policy, clipped surrogate and k3 KL). Prints the median milliseconds of each and its
share of the step.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from rlhf_lens.decoding import sample
from rlhf_lens.models import encode_prompts
from rlhf_lens.runs import Run
from rlhf_lens.training.config import PolicyStageConfig
from rlhf_lens.training.distributed import World
from rlhf_lens.training.policy.group import group_update
from rlhf_lens.training.policy.reward_source import reward_model_source
from rlhf_lens.training.policy.rollout import collect_rollout, group_seeds, token_logprobs

PHASES = ("sampling", "reference pass", "reward model", "update")


def step_arguments(description: str) -> argparse.Namespace:
    """The options of the step benchmarks: --run, --prompts, --group, --max-new-tokens, --repeats."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/quick"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args()


def step_inputs(run: Run, n_prompts: int):
    """(policy, reference, tokenizer, reward, prompts): the run's SFT policy twice, its reward model and its first prompts."""
    policy, tokenizer = run.load_model("sft"), run.load_tokenizer("sft")
    reward = reward_model_source(run.checkpoint("reward").path, torch.device("cpu"))
    prompts = [{"index": i, "id": p["id"], "prompt": p["prompt"]} for i, p in enumerate(run.data("prompts")[:n_prompts])]
    return policy, copy.deepcopy(policy), tokenizer, reward, prompts


def phase_times(run: Run, n_prompts: int, group: int, max_new_tokens: int, repeats: int) -> dict[str, float]:
    """Median seconds of each phase of one GRPO step (see the module docstring) on `run`'s SFT policy and reward model."""
    policy, reference, tokenizer, reward, prompts = step_inputs(run, n_prompts)
    cfg = PolicyStageConfig(algorithm="grpo", group_size=group, batch_size=n_prompts, max_new_tokens=max_new_tokens)
    pad_id = tokenizer.pad_token_id
    times: dict[str, list[float]] = {name: [] for name in PHASES}

    def timed(name, fn, *fn_args, **fn_kwargs):
        started = time.perf_counter()
        out = fn(*fn_args, **fn_kwargs)
        times[name].append(time.perf_counter() - started)
        return out

    for step in range(repeats + 1):
        flat, seeds = group_seeds(prompts, group, 0, step)
        texts = [p["prompt"] for p in flat]
        ids = encode_prompts(tokenizer, texts)
        with torch.no_grad():
            samples = timed("sampling", sample, policy, tokenizer, ids, seeds, max_new_tokens=max_new_tokens, with_logprobs=True)
            timed("reference pass", token_logprobs, reference, samples.prompt_ids, samples.completion_ids, pad_id, max_new_tokens)
            timed("reward model", reward.score, texts, samples.texts)
        rollout = collect_rollout(
            policy, reference, tokenizer, reward, None, prompts, group_size=group, seed=0, step=step,
            max_new_tokens=max_new_tokens, temperature=1.0, reward_scale=1.0, eos_penalty=1.0,
        )  # fmt: skip
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)  # the weights stay as they are
        timed("update", group_update, policy, optimizer, rollout, cfg, kl_coef=0.04, pad_id=pad_id, world=World(), seed=0, step=step)
        if step == 0:  # warm-up
            for values in times.values():
                values.clear()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    args = step_arguments(__doc__)
    medians = phase_times(Run.open(args.run), args.prompts, args.group, args.max_new_tokens, args.repeats)
    total = sum(medians.values())
    print(
        f"{args.run}: {args.prompts} prompts x {args.group} completions, {args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}"
    )
    for name, seconds in medians.items():
        print(f"  {name:<15} {seconds * 1000:8.1f} ms  {seconds / total:6.1%}")
    print(f"  {'step':<15} {total * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
