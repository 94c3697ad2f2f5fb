"""The policy-diff analyses a run gets from `rlhf-lens analyze` and the report: each policy stage's final policy
against the checkpoint it started from (run.json's `policy_from`), on its own final evaluation completions."""

from __future__ import annotations

from rlhf_lens import decoding, models
from rlhf_lens.analyses._reference import final_tag, policy_reference_folder, reference_missing
from rlhf_lens.analyses.attribution.over_training import policy_reference
from rlhf_lens.analyses.core.registry import Needs, analysis, register_section
from rlhf_lens.analyses.policy_diff.behaviour import BehaviourDiffResult, behaviour_diff
from rlhf_lens.analyses.policy_diff.diversity import DiversityResult, diversity_diff
from rlhf_lens.analyses.policy_diff.logit_lens import LogitLensResult, logit_lens_diff
from rlhf_lens.analyses.policy_diff.patching import PatchingResult, PositionPatchingResult, activation_patching, patch_positions
from rlhf_lens.analyses.policy_diff.weights import WeightDiffResult, weight_diff
from rlhf_lens.runs import Run

register_section(
    "policy_diff",
    "Policy before and after alignment",
    order=57,
    intro="What alignment changed in the policy's behaviour (reward and length distributions, the tokens it made likelier "
    "or rarer) and where in the network: the update of every weight tensor and whether it is "
    "low-rank; the logit lens of both policies (each layer's residual read out through the final norm and unembedding) "
    "and the depth at which their predictions part; and activation patching, which puts the aligned model's "
    "activations into the starting policy layer by layer and measures how much of the aligned log-probability of its "
    "own completions returns.",
)


def _eval_prompt_texts(run: Run) -> list[str]:
    if "prompts.jsonl" not in run.manifest["data"]:
        return []
    return [p["prompt"] for p in run.data("prompts") if p.get("split") == "eval"]


def _with_samples(run: Run, stage: str | None) -> str | None:
    missing = reference_missing(run, stage)
    if missing:
        return missing
    if run.eval_rollouts(stage).empty and not _eval_prompt_texts(run):
        return f"stage {stage!r} logged no evaluation samples and the run has no eval prompts to sample"
    return None


def _max_new_tokens(run: Run, stage: str) -> int:
    """As many tokens as the stage sampled in training (32 when its config does not say)."""
    configs = [c for c in run.config.get("stages", []) if c.get("name", c.get("kind")) == stage]
    return int(configs[0].get("max_new_tokens", 32)) if configs else 32


def _models_and_texts(run: Run, stage: str, texts: int):
    """The final policy, its reference, the tokenizer, and `texts` (prompt, completion ids) pairs: the final policy's
    own evaluation completions (the first prompts by id), or (for a run that logged none, such as a TRL folder's
    view) completions it samples now from the first eval prompts with seeds 0, 1, ..."""
    tag = final_tag(run, stage)
    reference, described = policy_reference(run, stage)
    policy, tokenizer = run.load_model(stage, tag), run.load_tokenizer(stage, tag)
    meta = {"stage": stage, "before": described, "after": f"{stage}/{tag}"}
    samples = run.eval_rollouts(stage)
    if not samples.empty:
        final = samples[samples["step"] == samples["step"].max()].sort_values("prompt_id").head(texts)
        return policy, reference, tokenizer, list(final["prompt"]), list(final["completion_ids"]), meta
    prompts = _eval_prompt_texts(run)[:texts]
    drawn = decoding.sample(
        policy, tokenizer, models.encode_prompts(tokenizer, prompts), range(len(prompts)), max_new_tokens=_max_new_tokens(run, stage)
    )
    meta["completions"] = "sampled by the analysis (the stage logged no evaluation samples)"
    return policy, reference, tokenizer, prompts, drawn.completion_ids, meta


def _two_evaluations(run: Run, stage: str | None) -> str | None:
    steps = run.eval_rollouts(stage)["step"].nunique()
    return None if steps >= 2 else f"stage {stage!r} logged {steps} evaluation(s); comparing behaviour needs the start and a later one"


@analysis(
    "policy_diff.behaviour",
    result=BehaviourDiffResult,
    section="policy_diff",
    needs=Needs(stage_kind="policy", checkpoints=True, eval_rollouts=True, requires=_two_evaluations),
    order=0,
)
def analyze_behaviour(run: Run, stage: str, *, min_count: int = 5, shown: int = 12) -> BehaviourDiffResult:
    """Gold, proxy and length distributions of the starting and final evaluations, and the tokens whose log-ratio to
    the reference the final policy moved most.

    Settings:
        min_count: occurrences in the final completions a token needs to be ranked (a mean over fewer is noise).
        shown: tokens listed each way (rose, fell).
    """
    tokenizer = run.load_tokenizer(stage, final_tag(run, stage))
    return behaviour_diff(run.eval_rollouts(stage), tokenizer, min_count=min_count, shown=shown, meta={"stage": stage})


@analysis(
    "policy_diff.weights",
    result=WeightDiffResult,
    section="policy_diff",
    needs=Needs(stage_kind="policy", checkpoints=True, manifest=True, requires=reference_missing),
    order=1,
)
def analyze_weight_diff(run: Run, stage: str, *, top_singular: int = 8) -> WeightDiffResult:
    """The update of every weight tensor from the checkpoint policy stage `stage` started from to its final one.

    Settings:
        top_singular: singular values of each matrix's update kept in the table (columns sv_1 ... sv_<top_singular>).
    """
    tag = final_tag(run, stage)
    reference = policy_reference_folder(run, stage)
    meta = {"stage": stage, "before": reference.description, "after": f"{stage}/{tag}"}
    return weight_diff(reference.path, run.checkpoint(stage, tag).path, top_singular=top_singular, meta=meta)


# The evaluation samples are not fingerprinted: the trainer writes them with the checkpoint, whose fingerprint
# changes when the stage is trained again. The prompts are, for runs that have none to read.
SAMPLES = Needs(stage_kind="policy", checkpoints=True, manifest=True, all_data=True, requires=_with_samples)


@analysis("policy_diff.logit_lens", result=LogitLensResult, section="policy_diff", needs=SAMPLES, order=2)
def analyze_logit_lens(run: Run, stage: str, *, texts: int = 32) -> LogitLensResult:
    """The logit lens of the final policy and its starting policy on the final policy's own evaluation completions.

    Settings:
        texts: final evaluation completions read (the first prompts by id).
    """
    policy, reference, tokenizer, prompts, completions, meta = _models_and_texts(run, stage, texts)
    return logit_lens_diff(policy, reference, tokenizer, prompts, completions, meta=meta)


@analysis("policy_diff.patching", result=PatchingResult, section="policy_diff", needs=SAMPLES, order=3)
def analyze_activation_patching(run: Run, stage: str, *, texts: int = 32) -> PatchingResult:
    """Patching each site and layer of the final policy into its starting policy: the share of the log-prob gain on the
    final policy's own evaluation completions each restores (read out through the starting policy's head).

    Settings:
        texts: final evaluation completions patched (the first prompts by id).
    """
    policy, reference, tokenizer, prompts, completions, meta = _models_and_texts(run, stage, texts)
    return activation_patching(policy, reference, tokenizer, prompts, completions, meta=meta)


@analysis("policy_diff.patching_positions", result=PositionPatchingResult, section="policy_diff", needs=SAMPLES, order=4)
def analyze_position_patching(run: Run, stage: str, *, texts: int = 32) -> PositionPatchingResult:
    """Patching the residual stream one layer and one position at a time (4 prompt tokens, 16 completion tokens).

    Settings:
        texts: final evaluation completions patched (the first prompts by id).
    """
    policy, reference, tokenizer, prompts, completions, meta = _models_and_texts(run, stage, texts)
    return patch_positions(policy, reference, tokenizer, prompts, completions, meta=meta)


def _eval_prompts(run: Run, stage: str | None) -> str | None:
    missing = reference_missing(run, stage)
    if missing:
        return missing
    return None if _eval_prompt_texts(run) else "the run's prompts hold no eval split"


@analysis(
    "policy_diff.diversity",
    result=DiversityResult,
    section="policy_diff",
    needs=Needs(stage_kind="policy", checkpoints=True, manifest=True, data=("prompts",), requires=_eval_prompts),
    order=6,
)
def analyze_diversity(run: Run, stage: str, *, prompts: int = 32, bootstrap: int = 1000, ci_level: float = 0.95) -> DiversityResult:
    """Diversity of the final policy's samples against its starting policy's, 4 samples of each of the first
    `prompts` evaluation prompts with the same seeds (Kirk et al., 2024).

    Settings:
        prompts: evaluation prompts both policies sample (4 samples each).
        bootstrap: resamples of the prompts for the intervals of the measures within a prompt.
        ci_level: coverage of the intervals (bootstrap within a prompt, jackknife across prompts).
    """
    tag = final_tag(run, stage)
    reference, described = policy_reference(run, stage)
    texts = _eval_prompt_texts(run)[:prompts]
    max_new_tokens = _max_new_tokens(run, stage)
    meta = {"stage": stage, "before": described, "after": f"{stage}/{tag}"}
    return diversity_diff(
        run.load_model(stage, tag),
        reference,
        run.load_tokenizer(stage, tag),
        texts,
        max_new_tokens=max_new_tokens,
        bootstrap=bootstrap,
        ci_level=ci_level,
        meta=meta,
    )
