"""Task registry: look a built-in task up by name, with its options checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlhf_lens.tasks.labelers import SimulatedLabelers
from rlhf_lens.tasks.sentiment.task import SentimentOptions, SentimentTask


@runtime_checkable
class Task(Protocol):
    """What the trainer and the analyses need from a task."""

    name: str
    options: Any
    has_oracle: bool

    def corpus(self, n: int, seed: int) -> list[dict]: ...
    def sft_pairs(self, n: int, seed: int) -> list[dict]: ...
    def prompts(self, n_train: int, n_eval: int, seed: int) -> list[dict]: ...
    def gold_reward(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray: ...
    def labelers(self, seed: int) -> SimulatedLabelers: ...


_REGISTRY: dict[str, tuple[type, type]] = {"sentiment": (SentimentTask, SentimentOptions)}
TASKS: tuple[str, ...] = tuple(_REGISTRY)
"""Names of the built-in tasks."""


def get_task(name: str, **options: Any) -> Task:
    """The built-in task ``name`` with ``options``; ValueError listing valid names / options otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    task_cls, options_cls = _REGISTRY[name]
    valid = [f.name for f in dataclasses.fields(options_cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) for task {name!r}: {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return task_cls(options_cls(**options))
