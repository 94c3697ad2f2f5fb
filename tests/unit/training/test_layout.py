"""The shape of rlhf_lens/training: short functions, and no run-directory file names outside rlhf_lens.runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[3] / "rlhf_lens" / "training"
MAX_FUNCTION_LINES = 50
RUN_FILE_LITERALS = ("meta.json", "config.json", "state.json")
STEP_TAG = re.compile(r"step-")


def modules() -> list[Path]:
    return sorted(TRAINING.rglob("*.py"))


def test_the_layout_has_policy_and_reward_packages():
    assert (TRAINING / "policy" / "online.py").is_file() and (TRAINING / "reward" / "objectives.py").is_file()
    assert len(modules()) > 20


def test_every_function_is_shorter_than_50_lines():
    too_long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # def line to last line, docstring included
                if lines >= MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(TRAINING)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, f"functions of {MAX_FUNCTION_LINES} lines or more: {too_long}; split them into named helpers"


def string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal in code, including the literal parts of f-strings; docstrings (of modules, classes,
    functions and fields: strings standing alone as a statement) excluded."""
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_run_file_names_or_hand_made_step_tags_outside_rlhf_lens_runs():
    found = []
    for path in modules():
        name = path.relative_to(TRAINING).as_posix()
        for line, text in string_constants(ast.parse(path.read_text())):
            hits = [literal for literal in RUN_FILE_LITERALS if literal in text] + (["step-"] if STEP_TAG.search(text) else [])
            found += [f"{name}:{line} {hit!r}" for hit in hits]
    assert not found, f"file names and checkpoint tags belong to rlhf_lens.runs (layout, read_* helpers, checkpoint_tag): {found}"
