"""`rlhf-lens analyze / report / compare` end to end on copies of the shared run: every section, the cache, hostile
text, no network, damaged inputs, a run with base and SFT only, and a real browser painting the summary."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from rlhf_lens.analyses.core.cache import analyze
from rlhf_lens.runs import Run, sha256_file

pytestmark = pytest.mark.slow

HOSTILE = ("</script><img src=x onerror=alert(1)>", '"><svg onload=alert(1)>', "{{ 7*7 }}", "line\u2028break")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_lens.cli", *args], capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"}
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("analyses", "report.html"))
    return target


def copy_with_cache(source: Path, target: Path) -> Path:
    """A copy that keeps the analyses cache: what reads a file the test then edits is recomputed (its fingerprint
    changes), the rest is served from the cache, so a test pays only for what it changes."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("report.html"))
    return target


@pytest.fixture(scope="module")
def reported(shared_run, tmp_path_factory) -> tuple[Path, str, str]:
    """A copy of the shared run after `analyze` and `report`: (run, report's output, analyze's output)."""
    run = copy_run(shared_run, tmp_path_factory.mktemp("reported") / "quick")
    analysed = cli("analyze", str(run), "--quiet")
    reporting = cli("report", str(run), "--quiet")
    return run, reporting.stdout, analysed.stdout


# --------------------------------------------------------------------------- what the report holds


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser


def test_report_has_every_section_with_real_content_and_recomputes_nothing(reported):
    run, reporting, analysed = reported
    html = (run / "report.html").read_text(encoding="utf-8")
    page = parse(html)
    ids = {attrs.get("id") for _, attrs in page.tags}
    assert {"summary", "provenance", "feedback", "curves", "reward_model", "policy"} <= ids
    assert "Not available" not in html  # the shared run has every stage kind: nothing is skipped
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) >= 6 and all(src.startswith("data:image/png;base64,") for src in images)
    assert html.count('class="verdict v-') >= 5
    text = " ".join(page.text)
    assert "sentiment-quick" in text and "base (260 steps) → sft (120 steps) → reward (ranking" in text
    # analyze computes each analysis once; report reuses all of it. Their time (budget 150 s on 2 cores) is measured by
    # benchmarks/budgets.py --only analyze_report, not here: a loaded CI machine is no evidence of a slow report.
    first = re.search(r": (\d+) computed, 0 reused from the cache, (\d+) skipped", analysed.splitlines()[0])
    assert first, analysed.splitlines()[0]
    labels = re.findall(r"^  computed +(.+?) +[\d.]+ s$", analysed, re.MULTILINE)
    assert len(labels) == len(set(labels)) == int(first[1]) > 0, analysed
    assert f": 0 computed, {first[1]} reused from the cache, {first[2]} skipped" in reporting, reporting


def test_the_probe_and_policy_diff_analyses_ran_on_every_stage_they_apply_to(reported):
    run = Run.open(reported[0])
    outcomes = {o.label: o for o in analyze(run, quiet=True)}  # all served from the cache the report filled
    assert all(o.status == "cached" for o in outcomes.values())
    probes = {label for label in outcomes if label.startswith(("probes.", "policy_diff.", "dynamics."))}
    assert probes == {
        "probes.reward_concepts [reward]",
        "probes.policy_concepts [policy]",
        "probes.reward_directions [reward]",
        "probes.reward_steering [reward]",
        "probes.policy_steering [policy]",
        "probes.reward_over_training [reward]",
        "probes.policy_over_training [policy]",
        "policy_diff.behaviour [policy]",
        "policy_diff.weights [policy]",
        "policy_diff.logit_lens [policy]",
        "policy_diff.patching [policy]",
        "policy_diff.patching_positions [policy]",
        "policy_diff.diversity [policy]",
        "dynamics.overoptimization [policy]",
    }
    over = outcomes["probes.reward_over_training [reward]"].result
    assert over.meta["checkpoints"] == [c.tag for c in sorted(run.checkpoints("reward"), key=lambda c: c.step)]
    steering = outcomes["probes.policy_steering [policy]"].result
    assert set(steering.df["concept"]) == {"sentiment", "length", "negation"} and len(steering.verdicts) == 3
    behaviour = outcomes["policy_diff.behaviour [policy]"].result
    assert set(behaviour.df["direction"]) == {"rose", "fell"} and behaviour.df["mean"].iloc[0] > 0
    assert {"gold_start", "gold_final", "proxy_final", "length_final"} <= set(behaviour.meta["distributions"])
    concepts = outcomes["probes.reward_concepts [reward]"].result
    assert set(concepts.meta["concepts"]) == {"gold sentiment", "negation", "trigger present", "domain", "length bucket", "reward"}


def test_a_second_analyze_is_served_from_the_cache(reported):
    run, _, first = reported
    assert "computed" in first.splitlines()[0]
    again = cli("analyze", str(run), "--quiet").stdout
    summary = again.splitlines()[0]
    assert re.search(r": 0 computed, (\d+) reused from the cache, 0 skipped", summary), summary
    assert int(re.search(r"(\d+) reused", summary).group(1)) == len([line for line in again.splitlines() if line.startswith("  cached")])


def test_the_report_loads_nothing_from_the_network_and_carries_a_strict_csp(reported):
    run, _, _ = reported
    html = (run / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", html, re.I) and "@import" not in html
    csp = [attrs["content"] for tag, attrs in parse(html).tags if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1 and "default-src 'none'" in csp[0] and "script-src" not in csp[0] and "unsafe-inline" not in csp[0]
    assert all(attrs["href"].startswith("#") for tag, attrs in parse(html).tags if tag == "a")
    assert "<script" not in html.lower()


# --------------------------------------------------------------------------- hostile text


def make_hostile(source: Path, target: Path) -> Path:
    """A finished run whose prompts, completions, labeler names, run name and config strings are hostile. Its
    analyses cache comes along: what reads the edited files is recomputed (their fingerprints change), the rest
    (the probes, which read only checkpoints and the corpus) is served from it."""
    run = copy_with_cache(source, target)
    bad = " ".join(HOSTILE)
    for shard in sorted((run / "logs" / "rollouts").rglob("step-*.parquet")):
        df = pd.read_parquet(shard)
        df["prompt"] = bad + " " + df["prompt"]
        df["completion"] = df["completion"] + " " + bad
        df.to_parquet(shard, index=False)
    feedback = run / "data" / "feedback.jsonl"
    records = [json.loads(line) for line in feedback.read_text(encoding="utf-8").splitlines()]
    for record in records:
        record["labeler"] = bad + " " + str(record.get("labeler"))
        if "prompt" in record:
            record["prompt"] = bad + " " + record["prompt"]
    feedback.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    manifest = json.loads((run / "run.json").read_text(encoding="utf-8"))
    manifest["name"] = "run " + bad
    manifest["config"]["name"] = bad
    manifest["config"]["note"] = bad
    manifest["data"]["feedback.jsonl"]["sha256"] = sha256_file(feedback)  # the run trained on this file
    (run / "run.json").write_text(json.dumps(manifest), encoding="utf-8")
    return run


def assert_inert(html: str) -> None:
    page = parse(html)
    for tag, attrs in page.tags:
        assert tag not in ("script", "svg", "iframe", "object", "embed"), tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:40]
    for text in HOSTILE[:2]:
        assert text not in html
    assert "\u2028" not in html  # written as &#x2028;
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html  # it did reach the page, as text
    assert "{{ 7*7 }}" in html  # shown as typed, never evaluated as a template


def test_hostile_text_is_inert_in_report_and_compare(reported, tmp_path):
    run = make_hostile(reported[0], tmp_path / "hostile")
    cli("report", str(run), "--quiet")
    assert_inert((run / "report.html").read_text(encoding="utf-8"))
    out = tmp_path / "compare.html"
    cli("compare", str(run), str(reported[0]), "--out", str(out), "--quiet")
    assert_inert(out.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- compare


def test_compare_puts_two_runs_side_by_side(reported, tmp_path):
    run, _, _ = reported
    other = copy_with_cache(run, tmp_path / "other")
    manifest = json.loads((other / "run.json").read_text(encoding="utf-8"))
    manifest["name"], manifest["config"]["seed"] = "other-seed", 123
    (other / "run.json").write_text(json.dumps(manifest), encoding="utf-8")
    out = tmp_path / "compare.html"
    done = cli("compare", str(run), str(other), "--out", str(out), "--quiet")
    assert str(out) in done.stdout
    html = out.read_text(encoding="utf-8")
    text = " ".join(parse(html).text)
    assert "sentiment-quick vs other-seed" in text
    assert re.search(r"seed\s+0\s+123", text), "the config difference (seed 0 vs 123) is listed"
    ids = {attrs.get("id") for _, attrs in parse(html).tags}
    assert {"summary", "config", "curves", "reward_model", "policy"} <= ids
    assert html.count('<div class="side">') >= 5


# --------------------------------------------------------------------------- partial and damaged runs

BASE_SFT_RECIPE = """
name = "base-sft-only"
seed = 0
[task]
name = "sentiment"
[data]
corpus_size = 600
sft_size = 200
train_prompts = 32
eval_prompts = 8
[model]
arch = "gpt2"
n_layer = 1
d_model = 32
n_head = 2
context = 48
vocab_size = 300
[[stages]]
kind = "base"
steps = 4
batch_size = 8
warmup_steps = 1
[[stages]]
kind = "sft"
steps = 2
batch_size = 8
warmup_steps = 1
eval_samples = 4
max_new_tokens = 8
"""


def test_a_run_with_only_base_and_sft_gets_a_report_that_says_what_is_missing(tmp_path):
    recipe = tmp_path / "base_sft.toml"
    recipe.write_text(BASE_SFT_RECIPE)
    cli("train", str(recipe), "--out", str(tmp_path / "run"), "--quiet")
    cli("report", str(tmp_path / "run"), "--quiet")
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert {"summary", "provenance", "curves"} <= {attrs.get("id") for _, attrs in parse(html).tags}
    assert "Not available: the run has no reward stage" in html
    assert "Not available: the run has no policy stage" in html
    assert "Not available: the run has no feedback data" in html


def test_damaged_rollouts_or_feedback_give_a_clear_error_and_leave_the_previous_report(reported, tmp_path):
    run = copy_run(reported[0], tmp_path / "damaged")
    previous = "<html>the previous report</html>"
    (run / "report.html").write_text(previous)
    shard = sorted((run / "logs" / "rollouts" / "policy" / "eval").glob("step-*.parquet"))[-1]
    shard.write_bytes(shard.read_bytes()[:100])
    done = cli("report", str(run), "--quiet", check=False)
    assert done.returncode == 1 and str(shard) in done.stderr and "not a readable parquet file" in done.stderr
    assert "Traceback" not in done.stderr
    assert (run / "report.html").read_text() == previous

    run = copy_run(reported[0], tmp_path / "feedback")
    (run / "report.html").write_text(previous)
    with open(run / "data" / "feedback.jsonl", "a") as f:
        f.write('{"kind": "comparison", "prompt": "edited after training"}\n')
    done = cli("report", str(run), "--quiet", check=False)
    assert done.returncode == 1 and "feedback.jsonl" in done.stderr and "changed after the run was written" in done.stderr
    assert (run / "report.html").read_text() == previous


def test_cli_exit_codes_mean_something(tmp_path):
    missing = cli("analyze", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    assert cli("report", check=False).returncode == 2  # usage: RUN is required
    assert cli("analyze", str(tmp_path), "--only", "no.such", check=False).returncode == 1
    helped = cli("--help")
    assert "rlhf-lens report runs/quick" in helped.stdout and "exit status" in helped.stdout


# --------------------------------------------------------------------------- a real browser


def chromium() -> str:
    """The Chromium binary, installed from Debian's packages when missing (needs root and apt-get)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-dejavu-core"]  # text needs a font
        if subprocess.run(install, capture_output=True, env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            subprocess.run(install, capture_output=True, env=env)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Chromium is missing and could not be installed (run as root with apt-get, or install it: apt-get install chromium)")
    return found


def test_a_real_browser_without_javascript_paints_the_summary(reported, tmp_path):
    from PIL import Image

    run = reported[0]
    browser = chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = (run / "report.html").as_uri()
    png = tmp_path / "report.png"
    no_script = "--disable-javascript"  # the page must paint without JavaScript (its CSP forbids scripts anyway)
    subprocess.run([*flags, no_script, "--window-size=1280,900", f"--screenshot={png}", url], capture_output=True, timeout=120, check=True)
    # --dump-dom serialises the page through the browser's own script, so it runs with scripting on
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<h2>Summary</h2>" in dom and 'class="verdict v-' in dom
    image = Image.open(png).convert("L")
    top = image.crop((0, 0, image.width, 400))
    dark = sum(1 for value in top.getdata() if value < 128)
    assert dark > 2000, f"the top of the page is nearly blank ({dark} dark pixels)"
    summary_box = image.crop((0, 150, image.width, 600))  # the summary panel has a tinted background
    assert any(200 < value < 255 for value in summary_box.getdata())
