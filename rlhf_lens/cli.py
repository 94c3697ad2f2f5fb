"""`rlhf-lens` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from rlhf_lens.training.config import load_recipe
    from rlhf_lens.training.pipeline import train

    config = load_recipe(args.recipe, args.set or [])
    if args.resume and (args.out or args.overwrite):
        raise ValueError("--resume RUN continues RUN in place; leave out --out and --overwrite")
    out = Path(args.resume or args.out or Path("runs") / config.name)
    started = time.perf_counter()
    path = train(config, out, quiet=args.quiet, overwrite=args.overwrite, resume=bool(args.resume))
    print(f"{'resumed' if args.resume else 'trained'} {len(config.stages)} stage(s) into {path} in {time.perf_counter() - started:.1f} s")
    print(f"next: rlhf-lens inspect {path}")
    return 0


def _open(args: argparse.Namespace, path: str):
    """The run at `path`: a run directory, or a TRL output folder read through its view (with the adapter's options).
    Says so on stderr when the analyses' cache cannot go inside the run."""
    from rlhf_lens.runs import open_run

    run = open_run(
        path,
        reference=getattr(args, "reference", None),
        prompts=getattr(args, "prompts", None),
        task=getattr(args, "task", None),
        cache_dir=getattr(args, "cache_dir", None),
    )
    if args.command != "inspect" and getattr(args, "cache_dir", None) is None and not run.cache_dir.is_relative_to(run.path):
        print(f"note: {run.path} cannot be written; the analyses' cache goes to {run.cache_dir}", file=sys.stderr)
    return run


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rlhf_lens.runs.describe import describe_run

    print(describe_run(_open(args, args.run)))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from rlhf_lens.analyses import analyze

    run = _open(args, args.run)
    started = time.perf_counter()
    outcomes = analyze(run, _names(args.only), force=args.force, quiet=args.quiet, settings=_settings(args.set))
    print(_outcome_table(run, outcomes, time.perf_counter() - started))
    print(f"next: rlhf-lens report {args.run}")
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    import json

    from rlhf_lens.analyses import all_analyses, get_analysis

    chosen = [get_analysis(name) for name in _names(args.only)] if args.only else all_analyses()
    for analysis in chosen:
        settings = ", ".join(f"{name}={json.dumps(value)}" for name, value in analysis.params.items()) or "(no settings)"
        print(f"{analysis.name:<36} {settings}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    path, outcomes = write_run_report(_open(args, args.run), args.out, force=args.force, quiet=args.quiet, settings=_settings(args.set))
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB) in {time.perf_counter() - started:.1f} s: {_status_counts(outcomes)}")
    return 0


def write_run_report(
    run, out: str | os.PathLike[str] | None = None, *, force: bool = False, quiet: bool = False, settings=None
) -> tuple[Path, list]:
    """Analyse what the cache lacks, then write `run`'s report (default: `run.report_path`, <run>/report.html
    unless the run cannot be written) atomically.

    `settings` overrides analyses' settings ({"attribution.reward_words": {"texts": 64}}).
    Returns (the report's path, the analysis outcomes). What `rlhf-lens report` does; notebooks call it too.
    """
    from rlhf_lens.analyses import analyze
    from rlhf_lens.report import render_report, write_report
    from rlhf_lens.runs.safe_fs import refuse_links

    path = Path(out or run.report_path).absolute()
    refuse_links(path.parent, path.name)  # before the analyses: a link there is never written through
    outcomes = analyze(run, force=force, quiet=quiet, settings=settings)
    html = render_report(run, _report_sections(outcomes))  # everything is computed before anything is written
    return write_report(path, html), outcomes


def _cmd_compare(args: argparse.Namespace) -> int:
    from rlhf_lens.analyses import analyze
    from rlhf_lens.analyses.compare import compare_configs, overlay_curves
    from rlhf_lens.report import Entry, Section, render_comparison, write_report

    run_a, run_b = _open(args, args.run_a), _open(args, args.run_b)
    outcomes_a, outcomes_b = (analyze(run, quiet=args.quiet) for run in (run_a, run_b))
    whole = [
        Section(
            "config",
            "Config differences",
            "Every resolved config key whose value differs.",
            (Entry.of_result(compare_configs(run_a, run_b), "config-diff"),),
        )
    ]
    curves = [_only_result(outcomes, "curves.training") for outcomes in (outcomes_a, outcomes_b)]
    if all(c is not None for c in curves):
        overlay = overlay_curves(curves[0], curves[1], (run_a.name, run_b.name))
        whole.append(
            Section("curves", "Training curves", "Both runs' curves, stage by stage.", (Entry.of_result(overlay, "curves-overlay"),))
        )
    out = Path(args.out) if args.out else run_a.path.parent / f"compare-{run_a.path.name}-vs-{run_b.path.name}.html"
    write_report(out, render_comparison(run_a, run_b, whole, _paired_sections(outcomes_a, outcomes_b)))
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- wiring analyses to the report


def _names(only: str | None) -> list[str] | None:
    return [name.strip() for name in only.split(",") if name.strip()] if only else None


def _settings(pairs: list[str] | None) -> dict[str, dict[str, str]]:
    """`--set NAME.PARAM=VALUE` options as {analysis name: {setting: value as typed}} (typed by `Analysis.resolve_params`)."""
    settings: dict[str, dict[str, str]] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        name, dot, param = key.strip().rpartition(".")
        if not (sep and dot and name and param):
            raise ValueError(f"--set {pair!r}: expected ANALYSIS.SETTING=VALUE, e.g. attribution.reward_words.texts=64")
        settings.setdefault(name, {})[param] = value.strip()
    return settings


def _status_counts(outcomes) -> str:
    counts = {status: sum(o.status == status for o in outcomes) for status in ("computed", "cached", "skipped")}
    return f"{counts['computed']} computed, {counts['cached']} reused from the cache, {counts['skipped']} skipped"


def _outcome_table(run, outcomes, seconds: float) -> str:
    lines = [f"analysed {run.path} in {seconds:.1f} s: {_status_counts(outcomes)}"]
    for o in outcomes:
        detail = o.reason if o.status == "skipped" else f"{o.seconds:6.2f} s"
        lines.append(f"  {o.status:<9} {o.label:<44} {detail}")
    return "\n".join(lines)


def _entry(outcome):
    from rlhf_lens.report import Entry, anchor_for

    anchor = anchor_for(outcome.analysis.name, outcome.stage)
    if outcome.result is None:
        title = outcome.analysis.result_type.heading + (f": {outcome.stage}" if outcome.stage else "")
        return Entry.missing(title, anchor, outcome.reason)
    return Entry.of_result(outcome.result, anchor)


def _report_sections(outcomes) -> list:
    """Outcomes grouped into the registry's sections, in report order."""
    from rlhf_lens.analyses import sections
    from rlhf_lens.report import Section

    return [
        Section(spec.id, spec.title, spec.intro, tuple(_entry(o) for o in outcomes if o.analysis.section == spec.id))
        for spec in sections()
        if any(o.analysis.section == spec.id for o in outcomes)
    ]


def _only_result(outcomes, name: str):
    found = [o.result for o in outcomes if o.analysis.name == name and o.result is not None]
    return found[0] if found else None


PAIRED_LEAVE_OUT = ("provenance.config", "provenance.environment", "curves.training")
"""Shown once for both runs on the comparison page (config differences, overlaid curves) instead of side by side."""


def _paired_sections(outcomes_a, outcomes_b) -> list:
    from rlhf_lens.analyses import sections
    from rlhf_lens.report import PairedSection, anchor_for

    by_key_b = {(o.analysis.name, o.stage): o for o in outcomes_b}
    keys = [(o.analysis.name, o.stage) for o in outcomes_a] + [
        k for k in by_key_b if k not in {(o.analysis.name, o.stage) for o in outcomes_a}
    ]
    by_key_a = {(o.analysis.name, o.stage): o for o in outcomes_a}
    out = []
    for spec in sections():
        rows = []
        for name, stage in keys:
            a, b = by_key_a.get((name, stage)), by_key_b.get((name, stage))
            outcome = a or b
            if outcome.analysis.section != spec.id or name in PAIRED_LEAVE_OUT:
                continue
            title = outcome.analysis.result_type.heading + (f": {stage}" if stage else "")
            rows.append((title, anchor_for("compare", name, stage), _entry(a) if a else None, _entry(b) if b else None))
        if rows:
            out.append(PairedSection(spec.id, spec.title, spec.intro, tuple(rows)))
    return out


EXAMPLES = """examples:
  rlhf-lens train training/sentiment_quick.toml --out runs/quick
  rlhf-lens inspect runs/quick
  rlhf-lens analyze runs/quick                     compute every analysis that applies (cached in runs/quick/analyses/)
  rlhf-lens analyze runs/quick --only curves.training,provenance.data --force
  rlhf-lens analyze runs/quick --set attribution.reward_words.texts=64   recompute one analysis with another setting
  rlhf-lens settings                               every analysis's settings and their defaults
  rlhf-lens report runs/quick                      writes runs/quick/report.html
  rlhf-lens compare runs/quick runs/quick-seed1    writes runs/compare-quick-vs-quick-seed1.html
  rlhf-lens report trl-out --reference sft-model --prompts prompts.jsonl
                                                   a TRL output folder: writes trl-out/rlhf-lens/report.html

exit status: 0 done, 1 a problem with the run, recipe or disk (the message names the file or field and the fix),
2 bad usage, 3 an internal error (a bug: the message says where its traceback was saved), 130 interrupted."""


RUN_HELP = "run directory, or a TRL output folder (checkpoint-N/ + trainer_state.json)"
SET_HELP = (
    "change one analysis setting, e.g. attribution.reward_words.texts=64 (repeatable); only that analysis is recomputed. "
    "`rlhf-lens settings` lists them"
)


def _add_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where the analyses' cache goes (default: RUN/analyses, or a per-user cache folder when RUN cannot be written)",
    )


def _add_adapter_options(parser: argparse.ArgumentParser) -> None:
    """Options for reading a TRL output folder; the folder's view (RUN/rlhf-lens/) remembers them for later calls."""
    group = parser.add_argument_group("TRL output folders (an rlhf-lens run records its own and refuses these)")
    group.add_argument("--reference", metavar="FOLDER", help="HF folder of the model TRL started from: the policy diff compares against it")
    group.add_argument("--prompts", metavar="FILE", help='JSONL of {"prompt": ...} records the policy-diff analyses sample')
    group.add_argument("--task", help="built-in task the run trained on (gives the gold reward), e.g. sentiment")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-lens",
        description="Train RLHF runs you can see inside, analyse them, and write offline HTML reports.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the stages of a TOML recipe into a run directory")
    train.add_argument("recipe", help="recipe file, e.g. training/sentiment_quick.toml")
    train.add_argument("--out", help="run directory to create (default: runs/<recipe name>)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. stages.sft.steps=10 (repeatable)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--resume", metavar="RUN", help="continue RUN (started from the same recipe) from its last complete checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    inspect = sub.add_parser("inspect", help="describe a run: manifest, stages, checkpoints, data, results")
    inspect.add_argument("run", help=RUN_HELP)
    _add_adapter_options(inspect)
    inspect.set_defaults(func=_cmd_inspect)

    analyze = sub.add_parser(
        "analyze",
        help="run every analysis that applies to a run, through its cache",
        description="Compute every analysis that applies to RUN and cache it under RUN/analyses/; an unchanged run is "
        "served from the cache. Lists what was computed, reused and skipped (with why).",
    )
    analyze.add_argument("run", help=RUN_HELP)
    analyze.add_argument("--only", metavar="NAME,...", help="only these analyses, e.g. provenance.data,curves.training")
    analyze.add_argument("--force", action="store_true", help="recompute even what the cache holds")
    analyze.add_argument("--set", action="append", metavar="NAME.SETTING=VALUE", help=SET_HELP)
    analyze.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_cache_option(analyze)
    _add_adapter_options(analyze)
    analyze.set_defaults(func=_cmd_analyze)

    settings = sub.add_parser(
        "settings",
        help="list every analysis's settings and their defaults (change one with analyze/report --set NAME.SETTING=VALUE)",
    )
    settings.add_argument("--only", metavar="NAME,...", help="only these analyses")
    settings.set_defaults(func=_cmd_settings)

    report = sub.add_parser(
        "report",
        help="write a run's self-contained HTML report (analysing what is missing)",
        description="Analyse what the cache lacks, then write one offline HTML file: a summary with every verdict, "
        "then a section per analysis. Nothing in it loads from the network or runs a script.",
    )
    report.add_argument("run", help=RUN_HELP)
    report.add_argument(
        "--out", metavar="FILE", help="where to write it (default: RUN/report.html, or the cache folder when RUN cannot be written)"
    )
    report.add_argument("--force", action="store_true", help="recompute every analysis first")
    report.add_argument("--set", action="append", metavar="NAME.SETTING=VALUE", help=SET_HELP)
    report.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_cache_option(report)
    _add_adapter_options(report)
    report.set_defaults(func=_cmd_report)

    compare = sub.add_parser(
        "compare",
        help="write one HTML page comparing two runs side by side",
        description="Config differences, reward-model figures, policy outcomes and verdicts of two runs side by side, "
        "and their curves overlaid, in one offline HTML file.",
    )
    compare.add_argument("run_a", metavar="RUN_A", help="first run directory (or TRL output folder)")
    compare.add_argument("run_b", metavar="RUN_B", help="second run directory (or TRL output folder)")
    compare.add_argument("--out", metavar="FILE", help="where to write it (default: compare-A-vs-B.html beside RUN_A)")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_cache_option(compare)
    compare.set_defaults(func=_cmd_compare)
    return parser


def quiet_transformers() -> None:
    """Keep transformers' load reports and weight-loading bars out of our own progress output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)  # bad usage exits with status 2
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"  # the analyses' own progress bars too
    try:
        quiet_transformers()
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\nrlhf-lens {args.command}: interrupted; {_what_was_kept(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line; only bugs leave a traceback, in a file
        return _report_failure(args.command, exc)


def _report_failure(command: str, exc: Exception) -> int:
    """Print one line for `exc` and return the exit status: 1 for what a user can cause and fix, 3 for a bug."""
    from rlhf_lens.runs import RunLookupError
    from rlhf_lens.runs.safe_fs import DiskFullError, is_disk_full
    from rlhf_lens.training.policy.reward_source import RewardError

    if isinstance(
        exc, DiskFullError | ValueError | FileNotFoundError | NotADirectoryError | FloatingPointError | RunLookupError | RewardError
    ):
        # Errors a user can cause carry a message meant for them (file or field, and the fix); no traceback needed.
        print(f"rlhf-lens {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    if is_disk_full(exc):
        print(f"rlhf-lens {command}: error: no space left on the device ({_one_line(exc)}); free some space and run again", file=sys.stderr)
        return 1
    if isinstance(exc, OSError) and exc.filename is not None:
        print(f"rlhf-lens {command}: error: {exc.filename}: {exc.strerror}; check the path and its permissions", file=sys.stderr)
        return 1
    if os.environ.get(TRACEBACK_ENV):
        raise exc
    saved = _save_traceback(exc)
    print(
        f"rlhf-lens {command}: internal error: {type(exc).__name__}: {_one_line(exc)}. This is a bug in rlhf-lens; its traceback is in "
        f"{saved} (set {TRACEBACK_ENV}=1 to print it)",
        file=sys.stderr,
    )
    return 3


TRACEBACK_ENV = "RLHF_LENS_TRACEBACK"


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (a library's may span several)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _save_traceback(exc: Exception) -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="rlhf-lens-error-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(exc)))
    return path


def _what_was_kept(args: argparse.Namespace) -> str:
    """What an interrupted command leaves behind: every file is written whole or not at all."""
    from rlhf_lens.runs.atomic import files_written

    written = files_written()
    if not written:
        return "nothing was written"
    if args.command == "train":
        run = args.resume or args.out or "the run folder"
        return f"the run keeps every complete checkpoint; continue with: rlhf-lens train {args.recipe} --resume {run}"
    return (
        f"{written} complete file(s) were written and are kept (the analyses finished so far stay cached); run the command again to go on"
    )


if __name__ == "__main__":
    sys.exit(main())
