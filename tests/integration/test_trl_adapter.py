"""The TRL adapter: real GRPOTrainer and DPOTrainer output folders, trained here from the shared run's SFT model,
read as runs; the analyses and the report run on them; the pickles such folders hold are never opened."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from rlhf_lens.cli import main, write_run_report
from rlhf_lens.runs import Run, open_run

pytestmark = pytest.mark.slow

STEPS = 4
PICKLES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "pytorch_model.bin")
"""What a Trainer leaves in its folders (and a pickled model beside the safetensors): each one is a payload here."""
POLICY_DIFF = (
    "policy_diff.weights",
    "policy_diff.logit_lens",
    "policy_diff.patching",
    "policy_diff.patching_positions",
    "policy_diff.diversity",
)


def _trainer_args(out: Path) -> dict:
    return dict(
        output_dir=str(out),
        use_cpu=True,
        report_to=[],
        save_strategy="steps",
        save_steps=2,
        max_steps=STEPS,
        logging_steps=1,
        learning_rate=3e-4,
        disable_tqdm=True,
        seed=0,
    )


def _model_and_tokenizer(sft: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(sft), local_files_only=True)
    tokenizer.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(str(sft), local_files_only=True), tokenizer


def train_trl_grpo(sft: Path, prompts: list[str], out: Path) -> Path:
    """GRPOTrainer, a few steps, checkpoints every 2, then save_model at the top (as TRL's scripts do)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = _model_and_tokenizer(sft)
    config = GRPOConfig(**_trainer_args(out), per_device_train_batch_size=8, num_generations=4, max_completion_length=16, beta=0.04)

    def positive_words(completions, **kwargs):
        return [sum(c.count(w) for w in ("great", "good", "love")) + 0.01 * len(c) for c in completions]

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=positive_words,
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(out))
    return out


def train_trl_dpo(sft: Path, pairs: list[dict], out: Path) -> Path:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = _model_and_tokenizer(sft)
    config = DPOConfig(**_trainer_args(out), per_device_train_batch_size=8, max_length=64)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs])
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out))
    return out


class _Payload:
    """Unpickling this creates the marker file: proof that something opened the pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def calls_on_load(payload: bytes) -> tuple[str, str] | None:
    """The (module, name) a pickle calls when loaded (its global followed by REDUCE), read from its opcodes without
    loading it; None when it calls nothing."""
    import pickletools

    strings, called = [], None
    for opcode, arg, _ in pickletools.genops(payload):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL" and called is None:  # the first global is what REDUCE calls
            called = tuple(strings[-2:])
        elif opcode.name == "GLOBAL" and called is None:
            called = tuple(arg.split(" ", 1))
    return called if called is not None and b"R" in payload else None


def plant_payloads(folder: Path, marker: Path) -> list[Path]:
    """Replace every pickle TRL wrote (and add a pickled model) in `folder` and its checkpoints with the payload."""
    payload = pickle.dumps(_Payload(marker))
    assert calls_on_load(payload) == ("pathlib", "Path.touch")  # loading it would create the marker (read, not run)
    planted = []
    for sub in [folder, *sorted(folder.glob("checkpoint-*"))]:
        for name in PICKLES:
            if sub == folder or name != "pytorch_model.bin":
                (sub / name).write_bytes(payload)
                planted.append(sub / name)
    return planted


@pytest.fixture(scope="module")
def trl_folders(shared_run, tmp_path_factory):
    """(grpo folder, dpo folder, prompts file, marker path), each TRL folder trained here with payloads planted."""
    os.environ["WANDB_DISABLED"] = "true"
    run = Run.open(shared_run)
    sft = run.checkpoint("sft").path
    work = tmp_path_factory.mktemp("trl")
    prompts = [p["prompt"] for p in run.data("prompts")]
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p, "split": "eval"}) + "\n" for p in prompts[:40]), encoding="utf-8")
    pairs = [r for r in run.data("feedback") if r.get("kind") == "comparison"][:32]
    grpo = train_trl_grpo(sft, prompts[:16], work / "grpo")
    dpo = train_trl_dpo(sft, pairs, work / "dpo")
    marker = work / "PAYLOAD_RAN"
    for folder in (grpo, dpo):
        assert plant_payloads(folder, marker)
    return grpo, dpo, sft, prompts_file, marker


@pytest.mark.parametrize(
    "which, trainer, logged", [(0, "grpo", ("reward", "kl", "completions/mean_length")), (1, "dpo", ("rewards/margins", "logps/chosen"))]
)
def test_a_trl_folder_reads_as_a_run_with_its_checkpoints_and_mapped_metrics(trl_folders, which, trainer, logged):
    folder, sft, prompts = trl_folders[which], trl_folders[2], trl_folders[3]
    run = open_run(folder, reference=sft, prompts=prompts)
    assert [s.name for s in run.stages("policy")] == [trainer]
    assert [(c.tag, c.step) for c in run.checkpoints(trainer)] == [("step-000002", 2), ("step-000004", 4), ("final", STEPS)]
    metrics = run.metrics(trainer)
    assert list(metrics["step"]) == list(range(1, STEPS + 1))
    for key in logged:
        assert metrics[key].notna().all(), key
    state = json.loads((folder / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert metrics[logged[0]].tolist() == pytest.approx([r[logged[0]] for r in state["log_history"] if logged[0] in r])
    assert sorted(p.name for p in run.checkpoint(trainer).path.iterdir() if p.suffix in (".bin", ".pt", ".pth")) == []
    # A later call without the options keeps the reference and prompts recorded in the view.
    again = open_run(folder)
    assert again.manifest["results"][trainer]["policy_from"] == str(sft.absolute())
    assert len(again.data("prompts")) == 40


@pytest.mark.parametrize("which", [0, 1])
def test_the_analyses_and_the_report_run_on_a_trl_folder_and_no_pickle_is_ever_opened(trl_folders, which):
    folder, sft, prompts, marker = trl_folders[which], trl_folders[2], trl_folders[3], trl_folders[4]
    run = open_run(folder, reference=sft, prompts=prompts)
    report, outcomes = write_run_report(run, quiet=True)
    done = {o.analysis.name: o for o in outcomes if o.status == "computed"}
    assert set(POLICY_DIFF) | {"curves.training", "provenance.stages"} <= set(done), {o.analysis.name: o.reason for o in outcomes}
    weights = done["policy_diff.weights"].result
    assert weights.meta["relative_total"] > 0  # the trainer did change the policy
    html = report.read_text(encoding="utf-8")
    assert report == folder / "rlhf-lens" / "report.html" and "Policy before and after alignment" in html
    assert not marker.exists(), "a pickle in the TRL folder was unpickled"
    # The CLI reads the same folder (its view remembers the reference), and still opens no pickle.
    assert main(["analyze", str(folder), "--quiet"]) == 0
    assert not marker.exists()


def test_trl_options_are_refused_for_a_run_and_a_folder_that_is_neither_gets_a_clear_error(shared_run, tmp_path, capsys):
    with pytest.raises(ValueError, match="apply only to TRL output folders"):
        open_run(shared_run, reference=tmp_path)
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        open_run(tmp_path)
    assert main(["report", str(tmp_path)]) == 1
    assert "TRL output folder" in capsys.readouterr().err
