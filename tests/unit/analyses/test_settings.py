"""Analysis settings: declared as keyword-only parameters, hashed into the cache key, overridden with --set."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pandas as pd
import pytest

import rlhf_lens.analyses.core.registry as registry
from rlhf_lens.analyses import Needs, Result, all_analyses, analyze, get_analysis
from rlhf_lens.analyses.core.registry import analysis, declared_params
from rlhf_lens.cli import main
from rlhf_lens.runs import Run
from tests.unit.analyses.test_core import make_run

CALLS: list[dict] = []


class ScaledResult(Result):
    """Test-only. Columns: step, value."""

    columns = ("step", "value")


def analyze_scaled_loss(run: Run, *, scale: float = 1.0, steps: int = 2, label: str = "loss") -> ScaledResult:
    CALLS.append({"scale": scale, "steps": steps, "label": label})
    metrics = run.metrics().head(steps)
    return ScaledResult(df=pd.DataFrame({"step": metrics["step"], "value": metrics[label] * scale}), meta={"scale": scale})


@pytest.fixture
def scaled():
    """A test analysis with three settings, registered for one test only."""
    CALLS.clear()
    analysis("test.scaled", result=ScaledResult, section="curves", needs=Needs(metrics=True))(analyze_scaled_loss)
    yield get_analysis("test.scaled")
    registry._ANALYSES.pop("test.scaled")


def test_settings_are_the_keyword_only_parameters_with_json_defaults(scaled):
    assert dict(scaled.params) == {"scale": 1.0, "steps": 2, "label": "loss"}
    assert scaled.resolve_params({"scale": "2"}) == {"scale": 2.0, "steps": 2, "label": "loss"}  # from the command line
    with pytest.raises(ValueError, match="has no setting 'scael'; its settings: label, scale, steps"):
        scaled.resolve_params({"scael": 2})
    with pytest.raises(ValueError, match=r"setting test.scaled.steps expects an integer like its default 2, got 2.5"):
        scaled.resolve_params({"steps": 2.5})
    with pytest.raises(ValueError, match="setting test.scaled.steps expects an integer"):
        scaled.resolve_params({"steps": True})

    def analyze_bad(run, *, where=Path(".")):
        raise AssertionError

    with pytest.raises(ValueError, match="setting 'where' needs a default that JSON can hold"):
        declared_params("test.bad", analyze_bad)


def test_changing_a_setting_recomputes_that_analysis_only_and_changing_nothing_reuses(tmp_path, scaled):
    run = Run.open(make_run(tmp_path).path)
    only = ["test.scaled", "curves.training"]
    first = {o.analysis.name: o for o in analyze(run, only, quiet=True)}
    assert {n: o.status for n, o in first.items()} == {"test.scaled": "computed", "curves.training": "computed"}
    again = {o.analysis.name: o.status for o in analyze(run, only, quiet=True)}
    assert again == {"test.scaled": "cached", "curves.training": "cached"} and len(CALLS) == 1

    changed = {o.analysis.name: o for o in analyze(run, only, quiet=True, settings={"test.scaled": {"scale": 3}})}
    assert {n: o.status for n, o in changed.items()} == {"test.scaled": "computed", "curves.training": "cached"}
    assert CALLS[-1] == {"scale": 3.0, "steps": 2, "label": "loss"}
    assert changed["test.scaled"].result.df["value"].tolist() == [3 * v for v in first["test.scaled"].result.df["value"]]
    assert analyze(run, only, quiet=True, settings={"test.scaled": {"scale": 3}})[0].status == "cached"
    assert analyze(run, only, quiet=True)[0].status == "cached" and len(CALLS) == 2  # the default's entry is still there

    direct = analyze_scaled_loss(run)  # a direct call computes with the defaults the cache key recorded
    pd.testing.assert_frame_equal(direct.df, first["test.scaled"].result.df)


def test_cli_set_overrides_a_setting_and_bad_settings_are_one_line(tmp_path, scaled, capsys):
    path = str(make_run(tmp_path).path)
    assert main(["analyze", path, "--only", "test.scaled,curves.training", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["analyze", path, "--only", "test.scaled,curves.training", "--quiet", "--set", "test.scaled.steps=3"]) == 0
    out = capsys.readouterr().out
    assert "1 computed, 1 reused from the cache" in out and CALLS[-1]["steps"] == 3
    for bad, message in [
        ("test.scaled.steps=many", "expects an integer"),
        ("test.scaled.nope=1", "has no setting 'nope'"),
        ("no.such.setting=1", "no analysis called 'no.such'"),
        ("scale=1", "expected ANALYSIS.SETTING=VALUE"),
    ]:
        assert main(["analyze", path, "--quiet", "--set", bad]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["settings", "--only", "test.scaled"]) == 0
    assert 'scale=1.0, steps=2, label="loss"' in capsys.readouterr().out


# --------------------------------------------------------------------------- no setting hides in a module constant

NOT_SETTINGS: dict[str, str] = {
    # "module.CONSTANT": "why it changes no number and no verdict an analysis returns (display only, a name table, ...)",
    # ---- attribution/
    "rlhf_lens.analyses.attribution.analyses.WORDS_SHOWN": "display only: rows at each end of the alignment word table, drawn from all the words kept in meta",
    "rlhf_lens.analyses.attribution.generative.PARTS": "a label table: the values of the part column, indexed by _char_parts",
    "rlhf_lens.analyses.attribution.generative.BASELINES": "an error message's text: the baselines generative_integrated_gradients accepts",
    "rlhf_lens.analyses.attribution.generative.CONTEXT_RESERVE": "not a choice: generative_rewards' own fixed `context - 4`, mirrored so the attributed reward is the one the model gives",
    "rlhf_lens.analyses.attribution.over_training.TRACKED_WORDS": "display only: how many words OverTrainingResult.plot draws from the computed table",
    "rlhf_lens.analyses.attribution.over_training.TRACKED_MIN_COUNT": "display only: the occurrences a word needs for OverTrainingResult.plot to draw it",
    "rlhf_lens.analyses.attribution.policy.METHODS": "a validation list: the methods policy_attribution accepts",
    "rlhf_lens.analyses.attribution.reward.CPU_BATCH_TOKENS": "speed only: tokens per forward pass on a CPU; the same steps and sums, equal across batchings to float rounding (test_batched_and_one_at_a_time_agree)",
    "rlhf_lens.analyses.attribution.reward.HEATMAP_TEXTS": "display only: how many texts to_html shows as heatmaps from the computed table",
    "rlhf_lens.analyses.attribution.reward.WORD_MARKS": "a name table, not a choice: the marks with which tokenizers' pieces start a word (Ġ, ▁, whitespace)",
    # ---- probes/
    "rlhf_lens.analyses.probes.activations.SITES": "a validation list: every site collect_activations can read; each analysis names the sites it collects",
    "rlhf_lens.analyses.probes.activations.DEFAULT_SITES": "a library default of collect_activations/run_activations; every analysis passes its own sites (probes.analyses.SITES)",
    "rlhf_lens.analyses.probes.activations.READS": "a validation list (and library default) of the reads; every analysis passes its own read, which run_activations' key hashes",
    "rlhf_lens.analyses.probes.activations.BACKENDS": "a validation list: the backend names collect_activations accepts",
    "rlhf_lens.analyses.probes.activations.SHARD_BYTES": "memory only: the default shard size; no read depends on which texts share a shard or batch (equal to float rounding, test_probe_activations)",
    "rlhf_lens.analyses.probes.activations.MAX_SHARD_TEXTS": "memory only: caps the default shard size; no read depends on which texts share a shard or batch (equal to float rounding)",
    "rlhf_lens.analyses.probes.activations.STORE_FORMAT": "a file format tag of the activation store's index.json",
    "rlhf_lens.analyses.probes.activations.STORE_VERSION": "a file format version: a store of another version is refused, never read",
    "rlhf_lens.analyses.probes.activations.INDEX_JSON": "a file name",
    "rlhf_lens.analyses.probes.activations.LAYER_NAMING": "a description of the layer naming, written into index.json for readers",
    "rlhf_lens.analyses.probes.activations._BRIDGE_HOOKS": "a name table: the TransformerLens hook point of each site",
    "rlhf_lens.analyses.probes.activations._ATTENTION_NAMES": "a name table: what HF architectures call a block's attention submodule",
    "rlhf_lens.analyses.probes.activations._MLP_NAMES": "a name table: what HF architectures call a block's MLP submodule",
    "rlhf_lens.analyses.probes.analyses.SITES": "what the code reads (resid_pre and resid_post for residual_stream, resid_final for the reward): more sites go unread, fewer fail",
    "rlhf_lens.analyses.probes.analyses.SENTIMENT_VALUE": "a label table coding gold sentiment as a number in order; any increasing, equally spaced coding gives the same cosines, shares and steering",
    "rlhf_lens.analyses.probes.concepts.CONCEPTS": "a name table: each concept's label column and probe kind; which concepts an analysis probes is its concepts setting",
    "rlhf_lens.analyses.probes.concepts.LENGTH_BUCKETS": "a label table: the names of the length terciles (the buckets are the terciles whatever they are called)",
    "rlhf_lens.analyses.probes.linear.KINDS": "a validation list: the probe kinds",
    "rlhf_lens.analyses.probes.steering.POSITIONS": "a validation list: where steer_rewards can push; the analyses push at every position",
    # ---- policy_diff/, dynamics/, hacking/, policy_outcome
    "rlhf_lens.analyses.policy_diff.behaviour.DISTRIBUTIONS": "a name table: each distribution compared -> the evaluation column it reads (a column the samples lack is left out)",
    "rlhf_lens.analyses.policy_diff.patching.SITES": "a name table and validation list: the sites the hooks implement (a new one needs code in _module); the analysis patches all of them",
    "rlhf_lens.analyses.policy_diff.patching.READOUTS": "a validation list: the readout names activation_patching accepts",
    "rlhf_lens.analyses.dynamics.overoptimization.FORMS": "a validation list: the curve forms gao_fit knows ('rl', 'bon')",
    "rlhf_lens.analyses.hacking.analyses.ROLLOUT_COLUMNS": "a name table: eval_samples' metric columns -> the rollout column names the hacking functions read",
    "rlhf_lens.analyses.hacking.divergence.COLUMNS": "a name table: each metric -> the rollout column it is the mean of",
    "rlhf_lens.analyses.policy_outcome.METRICS": "a name table: each metric -> the rollout column it is the mean of",
    "rlhf_lens.analyses.policy_outcome.LABELS": "display only: axis and headline labels of the metrics",
    "rlhf_lens.analyses.policy_outcome.SCALE_NOTE": "display only: the HTML template of the heatmaps' colour-scale note",
    "rlhf_lens.analyses.policy_outcome.SAMPLE": "display only: the HTML template of one sample's side-by-side view",
    # ---- reward_model, feedback, curves, provenance, compare and the shared helpers
    "rlhf_lens.analyses._heldout._REWARDS_KEPT": "memory only: scored checkpoints kept in the process; an evicted one is scored again on the same texts in the same chunks, giving the same rewards",
    "rlhf_lens.analyses._heldout.METRIC_KEYS": "a name table: each column of reward_model.checkpoints -> the rm/ key the trainer writes for the same figure",
    "rlhf_lens.analyses.compare.ABSENT": "a label: the text shown for a config key one run lacks (compare is neither registered nor cached)",
    "rlhf_lens.analyses.curves._DESIGN_ORDER": "display only: the order CurvesResult.plot lays out metrics in; the table and verdict do not read it",
    "rlhf_lens.analyses.curves._EVENT_WORDS": "a label table: how the verdict's rule words each event; which events warn is the warning_events setting",
    "rlhf_lens.analyses.feedback.KINDS": "a name table: the feedback kinds in DESIGN.md's order, which sorts the counts table's rows only (unknown kinds go last)",
    "rlhf_lens.analyses.reward_model.CURVE_METRICS": "display only: the columns RewardCheckpointsResult.plot draws against the ceiling",
}
"""Module constants of analysis modules that do not change what an analysis computes, with the reason."""


def _plain_constants(module) -> dict[str, object]:
    """UPPER_CASE module-level names assigned in `module`'s own source whose value is a number, string, or a
    tuple/list/dict of plain values: the kind of thing a setting is."""
    tree = ast.parse(inspect.getsource(module))
    targets = [
        t
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
    ]
    names = [
        n.id
        for t in targets
        for n in (t.elts if isinstance(t, ast.Tuple | ast.List) else [t])
        if isinstance(n, ast.Name) and n.id.isupper()
    ]
    return {name: getattr(module, name) for name in names if _is_plain(getattr(module, name))}


def _is_plain(value) -> bool:
    if isinstance(value, dict):
        return all(_is_plain(v) for v in value.values())
    if isinstance(value, tuple | list):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def analysis_modules() -> list[str]:
    """Every module of `rlhf_lens.analyses` but the plumbing in `core`."""
    import pkgutil

    import rlhf_lens.analyses as package

    all_analyses()  # imports every analysis module
    return sorted(
        m.name
        for m in pkgutil.walk_packages(package.__path__, prefix="rlhf_lens.analyses.")
        if not m.name.startswith("rlhf_lens.analyses.core")
    )


def test_no_analysis_module_keeps_a_setting_in_a_module_constant():
    """A constant that changes what an analysis computes is not in its cache key; make it a keyword-only
    parameter of the analysis (a setting, passed down to the function that uses it), or list it in NOT_SETTINGS
    with the reason it changes no number and no verdict an analysis returns."""
    import importlib

    modules = analysis_modules()
    found = [
        f"{module}.{name}"
        for module in modules
        for name in _plain_constants(importlib.import_module(module))
        if f"{module}.{name}" not in NOT_SETTINGS
    ]
    assert not found, f"module constants that may be settings (make them keyword-only parameters): {found}"
    stale = [
        name for name in NOT_SETTINGS if name.rsplit(".", 1)[1] not in _plain_constants(importlib.import_module(name.rsplit(".", 1)[0]))
    ]
    assert not stale, f"NOT_SETTINGS lists constants that no longer exist: {stale}"
