"""A checkpoint save killed midway (SIGKILL via RLHF_LENS_CRASH_AFTER) leaves the run usable.

Both scenarios run their killed subprocess at the same time (module fixture),
since each pays the torch + transformers import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhf_lens.runs import CRASH_ENV, Run, RunWriter, checkpoint_tag

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[3]

SAVE_SCRIPT = textwrap.dedent("""
    import sys, torch, transformers
    from rlhf_lens.runs import RunWriter
    run_path, tag, step, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    writer = RunWriter.open(run_path)
    writer.save_checkpoint("sft", tag, model=transformers.GPT2LMHeadModel(cfg), step=step,
                           metrics={"loss": 1.0}, state={"step": step, "w": torch.ones(3)})
    print("SAVE COMPLETED")
""")


def _start_killed_save(run_path: Path, tag: str, step: int, seed: int) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), **{CRASH_ENV: "model.safetensors"})
    return subprocess.Popen(
        [sys.executable, "-c", SAVE_SCRIPT, str(run_path), tag, str(step), str(seed)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """Two runs, each with a complete checkpoint, and a save into each killed after model.safetensors."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("crash")
    cfg = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0, pad_token_id=0
    )
    out = {}
    for name, tag in (("steps", checkpoint_tag(1)), ("final", "final")):
        writer = RunWriter.create(root / name, name=name, task="t", seed=0, config={})
        writer.add_stage("sft", "sft")
        torch.manual_seed(1)
        model = transformers.GPT2LMHeadModel(cfg).eval()
        writer.save_checkpoint("sft", tag, model=model, step=1, metrics={"loss": 2.0}, state={"step": 1})
        out[name] = {"path": writer.path, "model": model}
    procs = {
        "steps": _start_killed_save(out["steps"]["path"], checkpoint_tag(2), 2, seed=2),
        "final": _start_killed_save(out["final"]["path"], "final", 5, seed=2),
    }
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[name].update(returncode=proc.returncode, stdout=stdout, stderr=stderr)
    return out


def _same_weights(a, b):
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_killed_save_of_a_new_step_leaves_previous_checkpoint_usable(crashed):
    result = crashed["steps"]
    assert result["returncode"] == -signal.SIGKILL, result["stderr"][-2000:]
    assert "SAVE COMPLETED" not in result["stdout"]
    stage_dir = result["path"] / "checkpoints" / "sft"
    hidden = [p for p in stage_dir.iterdir() if p.name.startswith(".step-000002.tmp-")]
    assert len(hidden) == 1 and (hidden[0] / "model.safetensors").is_file()  # killed midway...
    assert not (hidden[0] / "meta.json").exists()  # ...before meta.json

    run = Run.open(result["path"])
    assert [c.tag for c in run.checkpoints("sft")] == ["step-000001"]
    assert _same_weights(result["model"], run.load_model("sft", "step-000001"))
    assert run.load_state("sft", "step-000001") == {"step": 1}
    assert run.stage("sft").checkpoints == ("step-000001",)

    RunWriter.open(result["path"])  # resuming tidies the leftover
    assert [p.name for p in stage_dir.iterdir()] == ["step-000001"]


def test_killed_resave_of_final_leaves_previous_final_intact(crashed):
    result = crashed["final"]
    assert result["returncode"] == -signal.SIGKILL, result["stderr"][-2000:]
    run = Run.open(result["path"])
    assert [(c.tag, c.step) for c in run.checkpoints("sft")] == [("final", 1)]
    assert _same_weights(result["model"], run.load_model("sft"))
    assert run.checkpoint("sft").meta["metrics"] == {"loss": 2.0}
