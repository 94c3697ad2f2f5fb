"""A run on a read-only mount, a disk that fills up, and Ctrl-C: tested for real (a read-only bind mount and a small
tmpfs, both need root; each test skips with the reason where mount(8) is refused)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_lens.cli import main
from rlhf_lens.runs import Run, RunWriter, open_run
from rlhf_lens.runs.safe_fs import DiskFullError
from tests.conftest import QUICK_RECIPE, REPO
from tests.unit.analyses.test_core import make_run
from tests.unit.runs.test_hostile_folders import tree_state
from tests.unit.runs.test_runs_trl import make_trl_folder

CHEAP = "curves.training,provenance.data"


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} was refused ({done.stderr.strip()}): these tests need root")


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` bind-mounted read-only onto itself for the duration."""
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,ro,bind", str(folder), str(folder))
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (`fill` takes its last free byte)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point))
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def fill(disk: Path) -> None:
    """Write zeros to disk/filler until the device is full."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of interrupted writes, and cache entries without their marker (.json)."""
    names = [p.name for p in folder.rglob("*")]
    half = [n for n in names if n.endswith(".parquet") and n.removesuffix(".parquet") + ".json" not in names and "analyses" in str(folder)]
    return [n for n in names if ".tmp-" in n] + half


# --------------------------------------------------------------------------- read-only runs


def test_a_read_only_run_is_analysed_with_its_cache_and_report_elsewhere(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "user-cache"))
    run_dir = make_run(tmp_path).path
    before = tree_state(run_dir)
    with read_only(run_dir):
        assert not os.access(run_dir, os.W_OK)
        assert main(["analyze", str(run_dir), "--only", CHEAP, "--quiet"]) == 0
        captured = capsys.readouterr()
        cache = Run.open(run_dir).cache_dir
        assert cache.is_relative_to(tmp_path / "user-cache") and f"cannot be written; the analyses' cache goes to {cache}" in captured.err
        assert "2 computed" in captured.out and any(cache.glob("curves.training-*.json"))
        assert main(["analyze", str(run_dir), "--only", CHEAP, "--quiet"]) == 0
        assert "0 computed, 2 reused from the cache" in capsys.readouterr().out

        assert main(["report", str(run_dir), "--quiet"]) == 0
        assert f"wrote {cache / 'report.html'}" in capsys.readouterr().out
        elsewhere = tmp_path / "mine.html"
        assert main(["report", str(run_dir), "--quiet", "--out", str(elsewhere), "--cache-dir", str(tmp_path / "chosen")]) == 0
        captured = capsys.readouterr()
        assert elsewhere.is_file() and "cannot be written" not in captured.err  # a chosen cache needs no note
        assert any((tmp_path / "chosen").glob("provenance.data-*.json"))
    assert tree_state(run_dir) == before


def test_an_uncached_read_only_run_reports_to_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "user-cache"))
    run_dir = make_run(tmp_path).path
    with read_only(run_dir):
        assert main(["report", str(run_dir), "--quiet", "--out", str(tmp_path / "report.html")]) == 0
    assert "Training curves" in (tmp_path / "report.html").read_text()


def test_a_read_only_trl_folder_gets_its_view_in_the_user_cache(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_LENS_CACHE", str(tmp_path / "user-cache"))
    folder = make_trl_folder(tmp_path / "out", tiny)
    before = tree_state(folder)
    with read_only(folder):
        run = open_run(folder)
        assert run.path.is_relative_to(tmp_path / "user-cache" / "trl-views")
        assert [c.tag for c in run.checkpoints("grpo")] == ["step-000002", "step-000004", "final"]
        assert main(["analyze", str(folder), "--only", "curves.training", "--quiet"]) == 0
    assert tree_state(folder) == before


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_while_caching_is_one_line_and_leaves_no_partial_entry(small_disk, capsys):
    run_dir = make_run(small_disk).path
    fill(small_disk)
    assert main(["analyze", str(run_dir), "--only", "curves.training", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device writing" in err and str(run_dir / "analyses") in err and "free some space" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert leftovers(run_dir) == []
    (small_disk / "filler").unlink()
    assert main(["analyze", str(run_dir), "--only", "curves.training", "--quiet"]) == 0  # nothing half-written in the way


def test_a_full_disk_while_writing_a_report_leaves_no_file(tmp_path, small_disk, capsys):
    run_dir = make_run(tmp_path).path
    fill(small_disk)
    out = small_disk / "report.html"
    assert main(["report", str(run_dir), "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"writing {out}: it needs" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and leftovers(small_disk) == []


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(small_disk, tiny):
    writer = RunWriter.create(small_disk / "run", name="small", task="sentiment", seed=0, config={})
    writer.add_stage("base", "base")
    model = tiny.lm(0)
    writer.save_checkpoint("base", "final", model=model, step=1, metrics={"loss": 1.0})
    fill(small_disk)
    with pytest.raises(DiskFullError) as full:
        writer.save_checkpoint("base", "final", model=tiny.lm(1), step=2, metrics={"loss": 0.5})
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert f"writing {small_disk / 'run' / 'checkpoints' / 'base' / 'final'}: it needs {model_bytes} bytes more" in str(full.value)
    run = Run.open(writer.path)
    assert run.checkpoint("base").step == 1 and tiny.same_weights(run.load_model("base"), model)
    assert [p.name for p in (writer.path / "checkpoints" / "base").iterdir()] == ["final"]


def test_a_full_disk_while_writing_activations_names_the_shard_and_leaves_none(small_disk, tiny_tokenizer, tmp_path):
    from rlhf_lens.analyses.probes.activations import collect_activations
    from tests.tiny_models import tiny_model

    folder = tmp_path / "model"
    tiny_model("gpt2", tiny_tokenizer).save_pretrained(folder)
    fill(small_disk)
    out = small_disk / "acts"
    with pytest.raises(DiskFullError, match=r"writing .*shard-00000.safetensors: it needs \d+"):
        collect_activations(folder, tiny_tokenizer, ["The food was"] * 4, [" good"] * 4, out_dir=out, quiet=True, backend="hooks")
    assert leftovers(small_disk) == [] and not list(out.glob("*.safetensors"))


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    import rlhf_lens.analyses.core.cache as cache

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "run_task", interrupted)
    monkeypatch.setattr("rlhf_lens.runs.atomic._written", 0)
    assert main(["analyze", str(tmp_path), "--quiet"]) == 1  # not a run: the error, not an interruption
    run_dir = make_run(tmp_path).path
    monkeypatch.setattr("rlhf_lens.runs.atomic._written", 0)
    capsys.readouterr()
    assert main(["analyze", str(run_dir), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "rlhf-lens analyze: interrupted; nothing was written"


@pytest.mark.slow
def test_ctrl_c_during_training_keeps_the_run_resumable(tmp_path):
    out = tmp_path / "run"
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "rlhf_lens.cli", "train", str(QUICK_RECIPE), "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "logs" / "metrics.jsonl").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted;" in err and f"--resume {out}" in err
    assert len(err.strip().splitlines()) == 1, err
    assert Run.open(out).stages()[0].name == "base"  # run.json is whole
