"""The registry of analyses: each module registers its analyses and its report section at import.

Adding an analysis is adding a module under `rlhf_lens.analyses` that calls `register_section`
and decorates its `analyze_*` functions with `@analysis(...)`; the CLI and the report find it
here (`all_analyses`, `sections`), nothing else is edited.

An analysis's settings are its keyword-only parameters, each with a default:

    @analysis("attribution.reward_words", ...)
    def analyze_reward_words(run: Run, stage: str, *, texts: int = 128, min_count: int = 5) -> RewardWordsResult:

The registry reads them from the signature (`Analysis.params`), the cache key hashes them, so a direct call
and `rlhf-lens analyze` compute with the same values, and `rlhf-lens analyze --set NAME.PARAM=VALUE`
overrides one (`resolve_params`). A setting left as a module constant would change results without
changing the key; `tests/unit/analyses/test_core.py` checks that none is.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from rlhf_lens.analyses.core.result import Result

if TYPE_CHECKING:
    from rlhf_lens.runs import Run


@dataclass(frozen=True)
class Section:
    """A report section: one heading, several analyses' results."""

    id: str
    """Anchor and key, e.g. "feedback"."""
    title: str
    """Heading, e.g. "Feedback"."""
    order: int
    """Position in the report (lower first)."""
    intro: str = ""
    """One or two sentences on what the section answers."""


@dataclass(frozen=True)
class Needs:
    """What an analysis reads from a run: it is skipped (with the reason) when the run lacks any of it, and its
    cache key covers the fingerprints of all of it."""

    stage_kind: str | None = None
    """Run once per stage of this kind (base, sft, reward, policy), passing `stage=<name>`."""
    checkpoints: bool = False
    """Reads the complete checkpoints of that stage."""
    data: tuple[str, ...] = ()
    """Data files read (corpus, sft, prompts, feedback)."""
    metrics: bool = False
    """Reads logs/metrics.jsonl."""
    rollouts: bool = False
    """Reads the stage's training rollout shards."""
    eval_rollouts: bool = False
    """Reads the stage's evaluation samples (step 0: the starting policy)."""
    manifest: bool = False
    """Reads run.json (config, stages, data records, environment)."""
    all_data: bool = False
    """Reads every data file the run has (needing none of them)."""
    reward_stages: bool = False
    """Reads the checkpoints of every reward stage (e.g. to score feedback with the reward model)."""
    requires: Callable[[Run, str | None], str | None] | None = None
    """A further condition the fields above cannot state: (run, stage) -> why the analysis cannot run, or None."""

    def targets(self, run: Run) -> list[str | None]:
        """The stages to run on (None: once for the whole run)."""
        if self.stage_kind is None:
            return [None]
        return [s.name for s in run.stages(self.stage_kind)]

    def missing(self, run: Run, stage: str | None) -> str | None:
        """Why the analysis cannot run on `stage` of `run`, or None when it can."""
        if self.stage_kind is not None and not run.stages(self.stage_kind):
            return f"the run has no {self.stage_kind} stage"
        for kind in self.data:
            if kind + ".jsonl" not in run.manifest["data"]:
                return f"the run has no {kind} data (data/{kind}.jsonl)"
        if stage is not None and self.checkpoints and not run.checkpoints(stage):
            return f"stage {stage!r} has no complete checkpoint"
        if self.metrics and run.metrics().empty:
            return "the run logged no metrics"
        if stage is not None and self.rollouts and not run.has_rollouts(stage):
            return f"stage {stage!r} logged no rollouts"
        if stage is not None and self.eval_rollouts and not run.has_rollouts(stage, evaluation=True):
            why = (
                "TRL logs none"
                if run.config.get("source") == "trl"
                else "best-of-n stages, and runs trained before rlhf-lens logged them, have none"
            )
            return f"stage {stage!r} logged no evaluation samples ({why})"
        if self.reward_stages and not any(run.checkpoints(s.name) for s in run.stages("reward")):
            return "the run has no reward stage with a complete checkpoint"
        return self.requires(run, stage) if self.requires is not None else None

    def fingerprints(self, run: Run, stage: str | None) -> list[str]:
        """Fingerprints of everything this analysis reads (see `Run.fingerprints`)."""
        checkpoint_stages = [stage] if stage is not None and self.checkpoints else []
        if self.reward_stages:
            checkpoint_stages += [s.name for s in run.stages("reward") if s.name not in checkpoint_stages]
        data = [name.removesuffix(".jsonl") for name in sorted(run.manifest["data"])] if self.all_data else self.data
        return run.fingerprints(
            checkpoints_of=checkpoint_stages,
            data=data,
            metrics=self.metrics,
            rollouts_of=[stage] if stage is not None and self.rollouts else [],
            eval_rollouts_of=[stage] if stage is not None and self.eval_rollouts else [],
            manifest=self.manifest,
        )


@dataclass(frozen=True)
class Analysis:
    """A registered analysis: `function(run, stage=...) -> result_type`."""

    name: str
    """Unique name, e.g. "reward_model.checkpoints" (also the cache file prefix)."""
    function: Callable[..., Result]
    result_type: type[Result]
    section: str
    """Id of the report section it belongs to."""
    needs: Needs = field(default_factory=Needs)
    order: int = 0
    """Position within the section."""
    version: int = 1
    """Bump when the computation changes, so cached results of the old code are not reused."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """The analysis's settings and their defaults: the keyword-only parameters of `function` (see the module
    docstring). Every value is JSON (numbers, strings, bools, None, lists of them)."""

    def resolve_params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The settings to compute with: the defaults, with `overrides` (by name) put in their place. ValueError
        names an unknown setting, or a value of another type than its default's."""
        resolved = dict(self.params)
        for name, value in (overrides or {}).items():
            if name not in self.params:
                known = ", ".join(sorted(self.params)) or "none"
                raise ValueError(f"analysis {self.name!r} has no setting {name!r}; its settings: {known}")
            resolved[name] = _coerce(self.name, name, value, self.params[name])
        return resolved


_ANALYSES: dict[str, Analysis] = {}
_SECTIONS: dict[str, Section] = {}


def register_section(id: str, title: str, order: int, intro: str = "") -> Section:
    """Declare a report section (once per module that owns it)."""
    section = Section(id, title, order, intro)
    _SECTIONS[id] = section
    return section


def analysis(name: str, *, result: type[Result], section: str, needs: Needs | None = None, order: int = 0, version: int = 1):
    """Register the decorated `analyze_*` function under `name`; the function itself is returned unchanged."""

    def register(function: Callable[..., Result]) -> Callable[..., Result]:
        if name in _ANALYSES and _ANALYSES[name].function.__qualname__ != function.__qualname__:
            raise ValueError(f"analysis {name!r} is registered twice ({_ANALYSES[name].function.__module__} and {function.__module__})")
        params = MappingProxyType(declared_params(name, function))
        _ANALYSES[name] = Analysis(name, function, result, section, needs or Needs(), order, version, params)
        return function

    return register


def declared_params(name: str, function: Callable[..., Result]) -> dict[str, Any]:
    """The keyword-only parameters of an analysis function and their defaults; ValueError (at import) for one
    without a default or with a default that is not JSON, since the cache key could not hold it."""
    params = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        default = parameter.default
        if default is inspect.Parameter.empty or not _is_json_value(default):
            raise ValueError(
                f"analysis {name!r}: setting {parameter.name!r} needs a default that JSON can hold (number, string, bool, None, "
                f"or a list of them), got {default!r}"
            )
        params[parameter.name] = default
    return params


def _is_json_value(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json_value(v) for v in value)
    return value is None or isinstance(value, bool | int | str)


def _coerce(analysis: str, name: str, value: Any, default: Any) -> Any:
    """`value` as the type of `default` (a string from the command line is read as JSON first)."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    kind = type(default)
    ok = (
        default is None
        or (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))
        or (kind is str and isinstance(value, str))
        or (kind in (list, tuple) and isinstance(value, list | tuple) and _is_json_value(value))
    )
    if not ok or not _is_json_value(value):
        raise ValueError(f"setting {analysis}.{name} expects {_type_word(default)} like its default {json.dumps(default)}, got {value!r}")
    return float(value) if kind is float else kind(value) if kind in (list, tuple) else value


def _type_word(default: Any) -> str:
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a JSON list", tuple: "a JSON list"}
    return words.get(type(default), "a value")


def load_all() -> None:
    """Import every analysis module of `rlhf_lens.analyses`, so each registers itself."""
    import rlhf_lens.analyses as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "core" and not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def all_analyses() -> list[Analysis]:
    """Every registered analysis, in report order (section, then order within it)."""
    load_all()
    missing = sorted({a.section for a in _ANALYSES.values()} - set(_SECTIONS))
    if missing:
        raise ValueError(f"analyses refer to unregistered report sections {missing}")
    return sorted(_ANALYSES.values(), key=lambda a: (_SECTIONS[a.section].order, a.order, a.name))


def get_analysis(name: str) -> Analysis:
    """The analysis called `name`; ValueError listing the names there are."""
    load_all()
    if name not in _ANALYSES:
        raise ValueError(f"no analysis called {name!r}; known: {', '.join(sorted(_ANALYSES))}")
    return _ANALYSES[name]


def sections() -> list[Section]:
    """Every registered section, in report order."""
    load_all()
    return sorted(_SECTIONS.values(), key=lambda s: s.order)
