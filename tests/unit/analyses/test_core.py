"""The analysis plumbing: verdict thresholds, Result shape, the registry's skip reasons, and the cache's key."""

from __future__ import annotations

import pandas as pd
import pytest

from rlhf_lens.analyses import Result, Verdict, all_analyses, get_analysis, judge, plan, run_task, sections
from rlhf_lens.analyses.core.cache import Task, cache_key
from rlhf_lens.runs import Run, RunWriter


def make_run(tmp_path, name="run") -> RunWriter:
    """A run with a base stage, a few logged metrics and a prompts file: enough for provenance and curves."""
    writer = RunWriter.create(tmp_path / name, name=name, task="sentiment", seed=3, config={"name": name, "model": {"n_layer": 1}})
    writer.add_stage("base", "base")
    writer.write_data("prompts", [{"id": "p0", "split": "train", "prompt": "The food was"}])
    for step in (1, 2, 3):
        writer.log_metrics("base", step, {"loss": 4.0 - step, "grad_norm": 1.0})
    return writer


def test_judge_applies_both_thresholds_in_either_direction():
    assert [judge(v, warn=0.05, flag=0.15) for v in (0.01, 0.05, 0.06, 0.2)] == ["ok", "ok", "warn", "flag"]
    assert [judge(v, warn=0.8, flag=0.6, higher_is_worse=False) for v in (0.9, 0.7, 0.5)] == ["ok", "warn", "flag"]
    assert judge(float("nan"), warn=1, flag=2) == "warn"  # a check that could not be made is not "ok"
    with pytest.raises(ValueError, match="Verdict.level must be one of"):
        Verdict("x", "bad", "evidence", "rule")


def test_a_result_refuses_a_table_without_its_documented_columns():
    class Scores(Result):
        columns = ("layer", "score")

    with pytest.raises(ValueError, match=r"Scores.df lacks columns \['score'\]"):
        Scores(df=pd.DataFrame({"layer": [0]}))
    html = Scores(df=pd.DataFrame({"layer": [0], "score": ["<b>x</b>"]}))._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


def test_every_registered_analysis_has_a_section_a_result_type_with_documented_columns_and_a_unique_name():
    analyses = all_analyses()
    assert {"provenance.stages", "provenance.data", "curves.training"} <= {a.name for a in analyses}
    section_ids = {s.id for s in sections()}
    for a in analyses:
        assert a.section in section_ids
        assert issubclass(a.result_type, Result) and a.result_type.columns, a.name
        assert "Columns:" in (a.result_type.__doc__ or ""), f"{a.result_type.__name__} does not document its columns"
        assert a.function.__name__.startswith("analyze_"), a.name
    with pytest.raises(ValueError, match="no analysis called 'nope'; known: "):
        get_analysis("nope")


def test_analyses_that_cannot_run_are_skipped_with_the_reason(tmp_path):
    run = Run.open(make_run(tmp_path).path)
    outcomes = {(t.analysis.name, t.stage): run_task(run, t) for t in plan(run)}
    skipped = {name: o.reason for (name, _), o in outcomes.items() if o.status == "skipped"}
    assert outcomes[("curves.training", None)].status == "computed"
    for name, reason in skipped.items():  # every stage-kind analysis: the run has only a base stage
        assert get_analysis(name).needs.stage_kind in ("sft", "reward", "policy") or get_analysis(name).needs.data, name
        assert reason.startswith("the run has no"), reason


def test_a_second_run_is_served_from_the_cache_and_force_recomputes(tmp_path):
    run = Run.open(make_run(tmp_path).path)
    task = Task(get_analysis("curves.training"), None)
    first = run_task(run, task)
    second = run_task(run, task)
    assert (first.status, second.status) == ("computed", "cached")
    pd.testing.assert_frame_equal(first.result.df, second.result.df)
    assert second.result.verdicts == first.result.verdicts and str(second.result.to_html()) == str(first.result.to_html())
    assert run_task(run, task, force=True).status == "computed"


def test_the_cache_key_follows_the_inputs_an_analysis_read(tmp_path):
    writer = make_run(tmp_path)
    run = Run.open(writer.path)
    curves, data = get_analysis("curves.training"), get_analysis("provenance.data")
    keys = {a.name: cache_key(run, a, None) for a in (curves, data)}
    assert cache_key(run, curves, None) == keys["curves.training"]  # stable while nothing changes

    writer.log_metrics("base", 4, {"loss": 0.5})  # a new metric line: the curves are stale
    assert cache_key(run, curves, None) != keys["curves.training"]

    prompts = writer.path / "data" / "prompts.jsonl"
    prompts.write_text(prompts.read_text().replace("The food was", "The food is"))  # changed data
    assert cache_key(run, data, None) != keys["provenance.data"]
    changed = run_task(Run.open(writer.path), Task(data, None))
    assert changed.status == "computed" and changed.result.verdicts[0].level == "flag"
    assert "data/prompts.jsonl" in changed.result.verdicts[0].evidence


def test_a_retrained_stage_changes_the_key_of_analyses_that_read_its_checkpoints(tmp_path):
    from rlhf_lens.analyses import Needs
    from tests.unit.runs.conftest import tiny_lm, tiny_tokenizer

    writer = make_run(tmp_path)
    model, tokenizer = tiny_lm(0), tiny_tokenizer()
    writer.save_checkpoint("base", "final", model=model, tokenizer=tokenizer, step=3, metrics={"loss": 1.0})
    needs = Needs(stage_kind="base", checkpoints=True)
    before = needs.fingerprints(Run.open(writer.path), "base")
    writer.save_checkpoint("base", "final", model=tiny_lm(1), tokenizer=tokenizer, step=3, metrics={"loss": 1.0})
    after = needs.fingerprints(Run.open(writer.path), "base")
    assert len(before) == len(after) == 1 and before != after


def test_the_training_curves_settings_choose_the_extra_keys_and_the_events_that_warn(tmp_path):
    from rlhf_lens.analyses import analyze_training_curves

    writer = make_run(tmp_path)
    writer.log_event("kl_warning", stage="base", step=2, what="KL 12.0 above the target")
    run = Run.open(writer.path)
    default = analyze_training_curves(run)
    assert set(default.df["metric"]) == {"loss", "grad_norm"} and default.verdicts[0].level == "warn"
    assert default.verdicts[0].threshold == (
        "warn on any skipped step (non-finite loss or reward), any NaN or infinite logged metric (a diverged run), or KL warning"
    )
    assert "1 kl_warning event(s)" in default.verdicts[0].evidence and "0 nonfinite_metric event(s)" in default.verdicts[0].evidence

    chosen = analyze_training_curves(run, extra_keys=(), warning_events=("nan_skip",))
    assert set(chosen.df["metric"]) == {"loss"}  # grad_norm is outside DESIGN.md's table
    assert chosen.verdicts[0].level == "ok" and chosen.verdicts[0].threshold == "warn on any skipped step (non-finite loss or reward)"
    assert chosen.meta["events"] == default.meta["events"]  # the events are listed either way
