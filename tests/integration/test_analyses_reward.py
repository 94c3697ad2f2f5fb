"""The feedback and reward-model analyses on the shared run: re-computed from the files, the final reward
checkpoint's figures equal what the trainer wrote into its meta.json."""

from __future__ import annotations

import shutil

import pytest

from rlhf_lens.analyses import _heldout
from rlhf_lens.analyses.feedback import analyze_disputed_feedback, analyze_feedback_counts, analyze_labelers
from rlhf_lens.analyses.reward_model import analyze_reward_calibration, analyze_reward_checkpoints, analyze_reward_length
from rlhf_lens.runs import Run, has_training_state
from tests import learning

pytestmark = pytest.mark.slow

FIGURES = ("accuracy", "accuracy_gold", "labeler_agreement", "label_accuracy_gold", "spearman_gold", "ece", "length_corr", "margin_mean")


@pytest.fixture(scope="module")
def run(shared_run):
    return Run.open(shared_run)


@pytest.fixture(scope="module")
def stage(run):
    return run.stages("reward")[0].name


def test_the_final_checkpoints_figures_equal_the_trainers(run, stage):
    result = analyze_reward_checkpoints(run, stage=stage)
    final = result.df.set_index("tag").loc["final"]
    logged = run.checkpoint(stage).meta["metrics"]
    for figure in FIGURES:
        assert final[figure] == pytest.approx(logged[f"rm/{figure}"], abs=1e-6), figure
    assert final["accuracy"] > 0.7 and final["accuracy_gold"] > 0.75  # the quick recipe's reward model learned
    assert [v.level for v in result.verdicts] == ["ok", "ok"]


@pytest.fixture
def scored(monkeypatch) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every call of a reward checkpoint while the test runs: (its checkpoint folder, the (prompt, completion)s it
    scored)."""
    calls, load = [], _heldout.load_reward_function

    def counting(folder, device="cpu"):
        reward_fn = load(folder, device)

        def score(prompts, completions):
            calls.append((str(folder), list(zip(prompts, completions))))
            return reward_fn(prompts, completions)

        return score

    monkeypatch.setattr(_heldout, "load_reward_function", counting)
    return calls


def test_each_checkpoint_scores_each_held_out_text_once(run, stage, scored, tmp_path):
    # the work the analysis does; its time (budget 60 s on 2 cores) is benchmarks/budgets.py --only reward_scoring.
    # On a copy: none of its checkpoints was scored in this process before (scores are kept by checkpoint folder)
    run = Run.open(shutil.copytree(run.path, tmp_path / "run", ignore=shutil.ignore_patterns("analyses", "report.html")))
    result = analyze_reward_checkpoints(run, stage=stage)
    texts = run.checkpoint(stage).meta["audit"]["heldout_texts"]
    assert result.df["texts"].tolist() == [texts] * len(run.checkpoints(stage))
    by_checkpoint = {}
    for folder, pairs in scored:
        by_checkpoint.setdefault(folder, []).extend(pairs)
    assert sorted(by_checkpoint) == sorted(str(c.path) for c in run.checkpoints(stage))
    for folder, pairs in by_checkpoint.items():
        assert len(pairs) == len(set(pairs)) == texts, folder  # each distinct text once, not once per pair it is in
    scored.clear()
    again = analyze_reward_checkpoints(run, stage=stage)
    assert scored == [] and again.df.equals(result.df)  # a second analysis in the process rescored nothing


def test_reward_stages_save_step_checkpoints_the_analyses_follow(run, stage):
    # the quick recipe saves every 128 of its 384 steps: step checkpoints are readable reward models, not resumable
    tags = [c.tag for c in run.checkpoints(stage)]
    assert tags == ["step-000128", "step-000256", "final"]
    step = run.checkpoint(stage, "step-000128")
    assert step.meta["reward_kind"] == "ranking" and step.meta["centred"] is False and not has_training_state(step.path)
    over_training = analyze_reward_checkpoints(run, stage=stage).df
    assert list(over_training["tag"]) == tags and over_training["accuracy"].between(0.5, 1).all()


def test_the_reliability_diagram_and_length_figures_are_the_trainers(run, stage):
    audit = run.checkpoint(stage).meta["audit"]
    calibration = analyze_reward_calibration(run, stage=stage)
    bins = calibration.df[["p_mean", "frequency", "count"]].to_dict("records")
    assert len(bins) == len(audit["calibration"])
    for mine, logged in zip(bins, audit["calibration"]):
        assert mine == pytest.approx(logged, abs=1e-6)
    length = analyze_reward_length(run, stage=stage)
    assert len(length.df) == audit["heldout_texts"]
    assert length.meta["length_corr"] == pytest.approx(run.checkpoint(stage).meta["metrics"]["rm/length_corr"], abs=1e-6)
    assert length.verdicts[0].level == "ok"  # the quick recipe plants no length bias


def test_the_reward_models_verdicts_hold_their_bounds(shared_run):
    learning.check(learning.measure_reward_analyses(shared_run).figures)  # swept over seeds and threads (tests/robustness.md)


def test_the_disputed_labels_are_the_trainers_and_the_counts_add_up(run, stage):
    audit = run.checkpoint(stage).meta["audit"]
    disputed = analyze_disputed_feedback(run, stage=stage)
    top = disputed.df.head(len(audit["disputed"]))
    assert list(zip(top["prompt"], top["chosen"], top["rejected"], top["labeler"])) == [
        (d["prompt"], d["chosen"], d["rejected"], d["labeler"]) for d in audit["disputed"]
    ]
    assert top["margin"].tolist() == pytest.approx([d["model_margin_for_rejected"] for d in audit["disputed"]], abs=1e-5)
    counts = analyze_feedback_counts(run).df
    assert counts["records"].sum() == run.manifest["data"]["feedback.jsonl"]["records"]
    assert counts.query("stage == @stage and split == 'eval'")["pairs"].sum() == audit["heldout_pairs"] == disputed.meta["heldout_pairs"]


def test_the_simulated_labelers_agree_as_the_trainer_measured_and_show_no_length_bias(run, stage):
    result = analyze_labelers(run)
    assert result.meta["labeler_agreement_by_stage"][stage] == pytest.approx(run.checkpoint(stage).meta["metrics"]["rm/labeler_agreement"])
    assert set(result.df["labeler"]) == set(run.checkpoint(stage).meta["audit"]["labelers"])
    assert result.df["prefers_longer"].between(0.4, 0.6).all()  # the quick recipe plants no length bias
    assert (result.df["gold_agreement"] > 0.7).all()
    assert {v.level for v in result.verdicts} == {"ok"}
