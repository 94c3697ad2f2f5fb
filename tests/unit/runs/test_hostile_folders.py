"""Folders a colleague might hand over, built to make rlhf-lens write or delete elsewhere, or to crash it.

Every case runs the real command line in-process and asserts: exit status 1, one message naming the path,
no traceback, and a sentinel tree outside the folder byte-for-byte unchanged (every file's hash and the
listing, links included).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from rlhf_lens.cli import main
from rlhf_lens.runs import Run, RunWriter, open_run
from rlhf_lens.runs.trl_view import VIEW_DIR
from tests.unit.runs.test_runs_trl import make_trl_folder


def tree_state(root: Path) -> dict[str, str]:
    """Every entry below `root` (not following links): a file's sha256, a link's target, or "dir"."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                state[rel] = "dir"
            else:
                state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture
def sentinel(tmp_path) -> Path:
    """A tree outside every folder under test, shaped like what a view writes, so a followed link would change it."""
    root = tmp_path / "sentinel"
    for rel in (
        "run.json",
        "checkpoints/grpo/step-000002/meta.json",
        "checkpoints/grpo/step-000099/model.safetensors",
        "logs/metrics.jsonl",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"precious {rel}\n")
    (root / "grpo" / "old-tag").mkdir(parents=True)
    (root / "grpo" / "old-tag" / "keep.txt").write_text("precious\n")
    (root / "file.json").write_text('{"precious": true}\n')
    return root


@pytest.fixture
def trl_folder(tmp_path, tiny) -> Path:
    return make_trl_folder(tmp_path / "out", tiny)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main([*args, "--quiet"]) if args[0] != "inspect" else main(list(args))
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, named: Path) -> None:
    assert code == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert str(named) in err, err
    assert len(err.strip().splitlines()) == 1, err


def plant(path: Path, target: Path) -> None:
    """Replace `path` (whatever it is) with a link to `target`."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


# (path of the planted link relative to the view, what it points to relative to the sentinel); the view exists first
VIEW_PLACEMENTS = {
    "checkpoints": ("checkpoints", ""),
    "stage folder": ("checkpoints/grpo", "grpo"),
    "tag folder": ("checkpoints/grpo/step-000002", "checkpoints/grpo/step-000002"),
    "stale-looking tag folder": ("checkpoints/grpo/step-000099", "checkpoints/grpo/step-000099"),
    "logs": ("logs", "logs"),
    "data": ("data", ""),
    "analyses": ("analyses", ""),
    "a cached analysis": ("analyses/provenance.stages-0123456789ab.json", "file.json"),
    "report": ("report.html", "file.json"),
    "meta.json": ("checkpoints/grpo/final/meta.json", "checkpoints/grpo/step-000002/meta.json"),
    "run.json": ("run.json", "run.json"),
    "metrics.jsonl": ("logs/metrics.jsonl", "logs/metrics.jsonl"),
    "a linked weight file": ("checkpoints/grpo/final/model.safetensors", "checkpoints/grpo/step-000099/model.safetensors"),
}


@pytest.mark.parametrize("command", ["inspect", "analyze", "report"])
def test_a_view_that_is_a_link_is_refused_and_nothing_outside_changes(trl_folder, sentinel, capsys, command):
    (trl_folder / VIEW_DIR).symlink_to(sentinel)
    before = tree_state(sentinel)
    code, err = run_cli(capsys, command, str(trl_folder))
    assert_refused(code, err, trl_folder / VIEW_DIR)
    assert "symbolic link" in err
    assert tree_state(sentinel) == before


@pytest.mark.parametrize("placement", sorted(VIEW_PLACEMENTS))
def test_a_link_planted_anywhere_in_a_view_is_refused_and_nothing_outside_changes(trl_folder, sentinel, capsys, placement):
    open_run(trl_folder)  # a good view first, as a colleague's folder would hold
    rel, target = VIEW_PLACEMENTS[placement]
    plant(trl_folder / VIEW_DIR / rel, sentinel / target)
    before = tree_state(sentinel)
    for command in ("inspect", "analyze", "report"):
        code, err = run_cli(capsys, command, str(trl_folder))
        assert_refused(code, err, trl_folder / VIEW_DIR / rel)
        assert tree_state(sentinel) == before, command


def test_entries_the_view_did_not_make_are_refused_not_deleted(trl_folder, sentinel, capsys):
    view = trl_folder / VIEW_DIR
    view.mkdir()
    (view / "notes.txt").write_text("a colleague's notes\n")
    code, err = run_cli(capsys, "inspect", str(trl_folder))
    assert_refused(code, err, view)
    assert "did not make it" in err and (view / "notes.txt").read_text() == "a colleague's notes\n"
    shutil.rmtree(view)
    open_run(trl_folder)
    stray = view / "checkpoints" / "grpo" / "step-000002" / "extra.json"
    stray.write_text("{}")
    stale = view / "checkpoints" / "grpo" / "step-000007"
    stale.mkdir()
    (stale / "mine.txt").write_text("mine\n")
    for path in (stray, stale):
        code, err = run_cli(capsys, "inspect", str(trl_folder))
        assert_refused(code, err, path if path == stray else stale)
        path.unlink() if path.is_file() else None
    assert (stale / "mine.txt").read_text() == "mine\n"  # never deleted, although the view would call it stale


def test_a_checkpoint_linked_from_outside_the_trl_folder_is_refused(trl_folder, tmp_path, tiny, sentinel, capsys):
    outside = make_trl_folder(tmp_path / "elsewhere", tiny, steps=(6,), final=False) / "checkpoint-6"
    (trl_folder / "checkpoint-6").symlink_to(outside)
    before = tree_state(tmp_path / "elsewhere")
    code, err = run_cli(capsys, "inspect", str(trl_folder))
    assert_refused(code, err, trl_folder / "checkpoint-6")
    assert "outside the TRL folder" in err
    assert tree_state(tmp_path / "elsewhere") == before
    (trl_folder / "checkpoint-6").unlink()
    (trl_folder / "checkpoint-2" / "config.json").unlink()
    (trl_folder / "checkpoint-2" / "config.json").symlink_to(sentinel / "file.json")
    code, err = run_cli(capsys, "inspect", str(trl_folder))
    assert_refused(code, err, trl_folder / "checkpoint-2" / "config.json")


def test_a_link_inside_the_trl_folder_is_followed_and_a_good_view_is_refreshed_in_place(trl_folder, capsys):
    shutil.copytree(trl_folder / "checkpoint-4", trl_folder / "elsewhere-6")
    (trl_folder / "checkpoint-6").symlink_to(trl_folder / "elsewhere-6")
    assert main(["inspect", str(trl_folder)]) == 0
    run = open_run(trl_folder)
    assert [c.tag for c in run.checkpoints("grpo")] == ["step-000002", "step-000004", "step-000006", "final"]
    ledger = json.loads((trl_folder / VIEW_DIR / ".rlhf-lens-view.json").read_text())["entries"]
    assert ledger["checkpoints/grpo/step-000006/model.safetensors"].startswith("link:")
    (trl_folder / "checkpoint-6").unlink()
    assert [c.tag for c in open_run(trl_folder).checkpoints("grpo")] == ["step-000002", "step-000004", "final"]
    assert (trl_folder / "elsewhere-6" / "model.safetensors").is_file()  # the view deleted its links, not their targets


@pytest.fixture
def plain_run(tmp_path) -> Path:
    """A run directory with no stages: the provenance analyses apply, nothing trains."""
    writer = RunWriter.create(tmp_path / "run", name="plain", task="sentiment", seed=0, config={"stages": []})
    return writer.path


@pytest.mark.parametrize(
    ("rel", "target", "command"),
    [
        ("analyses", "", "analyze"),
        ("analyses", "", "report"),
        ("analyses/provenance.stages-0123456789ab.json", "file.json", "analyze"),
        ("report.html", "file.json", "report"),
    ],
)
def test_a_run_directorys_own_cache_and_report_links_are_refused(plain_run, sentinel, capsys, rel, target, command):
    plant(plain_run / rel, sentinel / target)
    before = tree_state(sentinel)
    code, err = run_cli(capsys, command, str(plain_run))
    assert_refused(code, err, plain_run / rel)
    assert tree_state(sentinel) == before


def test_report_out_that_is_a_link_is_refused(plain_run, sentinel, capsys, tmp_path):
    out = tmp_path / "mine.html"
    out.symlink_to(sentinel / "file.json")
    before = tree_state(sentinel)
    code, err = run_cli(capsys, "report", str(plain_run), "--out", str(out))
    assert_refused(code, err, out)
    assert tree_state(sentinel) == before


# --------------------------------------------------------------------------- TRL files that lie or diverged


def _state(folder: Path, step: int = 4) -> Path:
    return folder / f"checkpoint-{step}" / "trainer_state.json"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"global_step": 1e400, "log_history": []}', "global_step"),
        ('{"global_step": "abc", "log_history": []}', "global_step"),
        ('{"global_step": -3, "log_history": []}', "global_step"),
        ('{"global_step": 4, "max_steps": true, "log_history": []}', "max_steps"),
        ('{"global_step": 4, "log_history": [{"step": 1, "loss": 0.5}, [1, 2], "x"]}', "log_history[1]"),
        ('{"global_step": 4, "log_history": ' + "[" * 50_000 + "]" * 50_000 + "}", "not valid JSON"),
        ("\xff\xfe not json", "not valid JSON"),
    ],
)
def test_a_trainer_state_that_lies_is_one_line_naming_the_file_and_field(trl_folder, capsys, text, named):
    _state(trl_folder).write_bytes(text.encode("latin-1"))
    code, err = run_cli(capsys, "inspect", str(trl_folder))
    assert_refused(code, err, _state(trl_folder))
    assert named in err
    assert not (trl_folder / VIEW_DIR).exists()  # refused before the view was started


def test_a_config_json_that_is_not_json_is_named(trl_folder, capsys):
    (trl_folder / "checkpoint-2" / "config.json").write_text("{not json")
    code, err = run_cli(capsys, "inspect", str(trl_folder))
    assert_refused(code, err, trl_folder / "checkpoint-2" / "config.json")


def test_nan_and_infinity_in_a_diverged_trl_log_are_kept_as_nan_and_reported(trl_folder, capsys):
    history = [
        {"step": 1, "loss": 0.5, "reward": 0.1, "reward_std": 0.2},
        {"step": 2, "loss": float("nan"), "reward": float("inf"), "reward_std": 0.2},
        {"step": 3, "loss": float("-inf"), "reward": 0.3, "reward_std": 0.2},
    ]
    for step in (2, 4):  # Python writes NaN and Infinity exactly as the Trainer does
        _state(trl_folder, step).write_text(json.dumps({"global_step": step, "log_history": history}))
    run = open_run(trl_folder)
    metrics = run.metrics("grpo").set_index("step")
    assert metrics.loc[1, "loss"] == 0.5 and metrics.loc[2, "loss"] != metrics.loc[2, "loss"]  # NaN
    assert metrics.loc[3, "reward"] == 0.3 and metrics.loc[2, "reward"] != metrics.loc[2, "reward"]
    events = run.events()
    diverged = events[events["event"] == "nonfinite_metric"]
    assert diverged["step"].tolist() == [2, 3]
    assert diverged["what"].tolist() == ["loss = nan, reward = inf", "loss = -inf"]
    assert main(["analyze", str(trl_folder), "--only", "curves.training", "--quiet"]) == 0
    from rlhf_lens.analyses import analyze

    (outcome,) = analyze(run, only=["curves.training"], quiet=True)
    verdict = outcome.result.verdicts[0]
    assert verdict.level == "warn" and "2 nonfinite_metric" in verdict.evidence


def test_a_config_json_that_disagrees_with_its_weights_is_one_line(tmp_path, tiny):
    from rlhf_lens.runs import RunFormatError, load_hf_folder

    folder = tmp_path / "model"
    tiny.lm().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"n_embd": 32}))
    with pytest.raises(RunFormatError) as refused:
        load_hf_folder(folder)
    assert str(folder) in str(refused.value) and "config.json and the weights belong together" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1


@pytest.mark.parametrize("rel", ["checkpoints/base", "logs"])
def test_resuming_a_run_with_a_planted_link_is_refused(tmp_path, sentinel, rel):
    from rlhf_lens.runs import RunFormatError

    writer = RunWriter.create(tmp_path / "run", name="r", task="sentiment", seed=0, config={})
    writer.add_stage("base", "base")
    (sentinel / "checkpoints" / "grpo" / ".final.tmp-1").mkdir()  # what resuming tidies away in its own folders
    plant(writer.path / rel, sentinel / "checkpoints" / "grpo")
    before = tree_state(sentinel)
    with pytest.raises(RunFormatError, match="symbolic link"):
        RunWriter.open(writer.path)
    assert tree_state(sentinel) == before
    with pytest.raises(FileExistsError, match="symbolic link"):
        RunWriter.create(writer.path / rel, name="r", task="sentiment", seed=0, config={}, overwrite=True)


def _lie_about_the_data(path: Path) -> None:
    """Rewrite a safetensors header so its first tensor claims 10 GB (the file keeps its few kB)."""
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] = 10**10
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + n :])


@pytest.mark.parametrize("command", ["inspect", "analyze"])
def test_a_lying_weights_header_in_a_trl_folder_is_one_line_and_nothing_outside_changes(trl_folder, sentinel, capsys, command):
    _lie_about_the_data(trl_folder / "checkpoint-4" / "model.safetensors")
    before = tree_state(sentinel)
    code, err = run_cli(capsys, command, str(trl_folder))
    assert_refused(code, err, trl_folder / "checkpoint-4" / "model.safetensors")
    assert "is not a valid safetensors file" in err and "10000000000" in err
    assert tree_state(sentinel) == before


def test_a_lying_weights_header_in_a_run_is_one_line(tmp_path, tiny, capsys):
    writer = RunWriter.create(tmp_path / "run", name="r", task="sentiment", seed=0, config={})
    writer.add_stage("base", "base")
    writer.save_checkpoint("base", "final", model=tiny.lm(), tokenizer=tiny.tokenizer(), step=1, metrics={})
    weights = writer.path / "checkpoints" / "base" / "final" / "model.safetensors"
    _lie_about_the_data(weights)
    from rlhf_lens.runs import RunFormatError

    with pytest.raises(RunFormatError, match="is not a valid safetensors file"):
        Run.open(writer.path).load_model("base")


@pytest.mark.parametrize("override", ["stages.base.steps=1e30", 'stages.base.lr="abc"', "stages.base.steps=true", "seed=-5"])
def test_a_recipe_value_of_the_wrong_type_writes_nothing_anywhere(tmp_path, sentinel, capsys, override):
    from tests.conftest import QUICK_RECIPE

    out = sentinel / "new-run"
    before = tree_state(sentinel)
    code, err = run_cli(capsys, "train", str(QUICK_RECIPE), "--out", str(out), "--set", override)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert override.split("=")[0] in err
    assert tree_state(sentinel) == before


def test_a_link_planted_where_a_shard_or_a_checkpoint_goes_is_never_written_through(tmp_path, sentinel, tiny):
    import os as _os

    from rlhf_lens.analyses.probes.activations import collect_activations
    from rlhf_lens.runs.safe_fs import UnsafePathError

    folder = tmp_path / "model"
    tiny.lm().save_pretrained(folder)
    tiny.tokenizer().save_pretrained(folder)
    out = tmp_path / "acts"
    out.mkdir()
    (out / "shard-00000.safetensors").symlink_to(sentinel / "file.json")
    writer = RunWriter.create(tmp_path / "run", name="r", task="sentiment", seed=0, config={})
    writer.add_stage("base", "base")
    (writer.path / "checkpoints" / "base").mkdir(parents=True, exist_ok=True)
    (writer.path / "checkpoints" / "base" / f".final.tmp-{_os.getpid()}").symlink_to(sentinel / "grpo")
    before = tree_state(sentinel)
    with pytest.raises(UnsafePathError, match="shard-00000.safetensors is a symbolic link"):
        collect_activations(folder, None, ["w1 w2"], [" w3"], out_dir=out, quiet=True, backend="hooks")
    writer.save_checkpoint("base", "final", model=tiny.lm(), step=1, metrics={})  # the planted link is removed, not followed
    assert tree_state(sentinel) == before
    assert Run.open(writer.path).checkpoint("base").step == 1
