"""Activations at every layer of a policy or reward model for many texts, streamed to safetensors shards.

`collect_activations` runs BOS + prompt + completion (exactly the tokens a reward model reads:
`models.reward_input_parts`) through a checkpoint, reads the residual stream, the attention output and the
MLP output of every block at two positions, and writes them shard by shard, so 100k texts take the memory of
one shard. `ActivationStore` reads them back; `reward_readout` gives the reward model's read-out direction
in the same coordinates.

Two backends, the same numbers (to 1e-5 of HF's `output_hidden_states`, tested on GPT-2, Llama, GPT-NeoX):
- "bridge": TransformerLens's `TransformerBridge.boot_transformers` on the checkpoint folder, read through
  its hook points. A reward (`*ForSequenceClassification`) folder boots as its causal-LM backbone; the score
  head is never needed here (apply it with `reward_readout`).
- "hooks": plain PyTorch hooks on the HF model's blocks, for architectures the bridge cannot boot.
"auto" boots the bridge for a folder (falling back to hooks, with a warning, if it cannot) and uses hooks for
a model object (the bridge rebuilds the modules of the model it wraps, so it would need a copy).

Layer naming, the one place it is written down (L = number of blocks; numbers as in HF's
`output_hidden_states` tuple, whose last entry comes *after* the final layer norm):

    site         layers   what                                                TransformerLens hook        HF hidden_states
    resid_pre    0..L-1   the residual stream entering block l                blocks.{l}.hook_resid_pre   [l]
    attn_out     0..L-1   block l's attention output (added to the residual)  blocks.{l}.hook_attn_out    -
    mlp_out      0..L-1   block l's MLP output (added to the residual)        blocks.{l}.hook_mlp_out     -
    resid_post   0..L-1   the residual stream leaving block l                 blocks.{l}.hook_out         [l+1], l < L-1
    resid_final  L        the final residual, after the final layer norm      ln_final.hook_out           [L]

resid_pre[l+1] = resid_pre[l] + attn_out[l] + mlp_out[l] (sequential and parallel-residual blocks alike), and
resid_post[L-1] is the final residual *before* the final norm. resid_final is what the LM head and a reward
model's score head read.

Reads (positions of the right-padded batch, found from the attention mask):
    last             the last real token (where a reward model scores the text)
    completion_mean  the mean over the completion's tokens (BOS and prompt excluded)

On disk (`out_dir`): shard-00000.safetensors, ...: tensors "<site>/<read>" (count, layer, d_model) float32,
"prefix_tokens" and "completion_tokens" (count,) int64, and the (prompt, completion) pairs as JSON in the header
metadata; index.json: format, version, the fingerprint of the inputs, model, backend, sites with their layers,
reads, this layer naming, the shards (file, start, count) and whether the store is complete. Each shard is
written atomically and then the index, so an interrupted collection resumes after its last complete shard.

Shape glossary: n (texts), batch, seq, layer, d_model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from rlhf_lens import models
from rlhf_lens.runs import RunFormatError, atomic_write_json, read_checkpoint_meta, read_model_config
from rlhf_lens.runs.safe_fs import DiskFullError, is_disk_full, remove, rename
from rlhf_lens.runs.weights import check_safetensors_header

if TYPE_CHECKING:
    import pandas as pd

    from rlhf_lens.runs import Run

__all__ = [
    "DEFAULT_SITES",
    "READS",
    "SITES",
    "ActivationStore",
    "RewardReadout",
    "collect_activations",
    "reward_readout",
    "run_activations",
]

SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post", "resid_final")
"""Every site that can be collected (see the module docstring for the layer naming)."""
DEFAULT_SITES = ("resid_pre", "attn_out", "mlp_out", "resid_final")
"""What `collect_activations` collects unless told otherwise (resid_post repeats resid_pre but for its last layer)."""
READS = ("last", "completion_mean")
"""The positions read: the last real token, and the mean over the completion's tokens."""
BACKENDS = ("auto", "bridge", "hooks")
SHARD_BYTES = 16 * 2**20
"""Default size of one shard (its buffer is what memory grows to, whatever the number of texts)."""
MAX_SHARD_TEXTS = 8192
"""At most this many texts a shard by default (their text goes into the shard's safetensors header)."""
STORE_FORMAT = "rlhf-lens-activations"
STORE_VERSION = 1
INDEX_JSON = "index.json"
LAYER_NAMING = (
    "resid_pre[l] = HF hidden_states[l], the residual entering block l (TL blocks.{l}.hook_resid_pre), l < L; "
    "attn_out[l], mlp_out[l] = block l's attention and MLP outputs (TL blocks.{l}.hook_attn_out, hook_mlp_out); "
    "resid_post[l] = the residual leaving block l (TL blocks.{l}.hook_out), before the final norm; "
    "resid_final[L] = HF hidden_states[L], after the final layer norm (TL ln_final.hook_out). "
    "Reads: last = the last real token; completion_mean = the mean over the completion's tokens."
)
"""The layer naming, as stored in every index.json."""

_BRIDGE_HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "resid_post": "blocks.{layer}.hook_out",
    "resid_final": "ln_final.hook_out",
}
_ATTENTION_NAMES = ("attn", "self_attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


# --------------------------------------------------------------------------- the store


class ActivationStore:
    """Activations written by `collect_activations`: a folder of safetensors shards and its index.json.

    Nothing is loaded until asked for: `array` reads one shard at a time into the array it returns.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        index = _read_index(self.path)
        if index is None:
            raise FileNotFoundError(f"{self.path} holds no activations ({INDEX_JSON} is missing); collect them with collect_activations")
        if not index.get("complete"):
            done = sum(s["count"] for s in index["shards"])
            raise RunFormatError(
                f"{self.path}: the activations are incomplete ({done} of {index['n_texts']} texts); run collect_activations "
                "again with the same inputs and out_dir to finish them"
            )
        self._index = index

    def __len__(self) -> int:
        return int(self._index["n_texts"])

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, {len(self)} texts, sites {list(self.sites)}, reads {list(self.reads)})"

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self._index["sites"])

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(self._index["reads"])

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        """The layer numbers of each site (resid_final: (L,) alone; see the module docstring)."""
        return {site: tuple(layers) for site, layers in self._index["sites"].items()}

    @property
    def n_layers(self) -> int:
        """L, the number of transformer blocks."""
        return int(self._index["model"]["n_layers"])

    @property
    def d_model(self) -> int:
        return int(self._index["model"]["d_model"])

    @property
    def info(self) -> dict[str, Any]:
        """The index: model (source, architecture, n_layers, d_model), backend, layer naming, shards, fingerprint."""
        return json.loads(json.dumps(self._index))

    @property
    def texts(self) -> pd.DataFrame:
        """One row per text, in input order: text (index), prompt, completion, prefix_tokens (BOS + prompt tokens
        kept), completion_tokens (completion tokens kept; see `models.reward_input_parts` on truncation)."""
        import pandas as pd
        from safetensors import safe_open

        frames = []
        for shard in self._index["shards"]:
            with safe_open(self.path / shard["file"], framework="np") as f:
                pairs = json.loads(f.metadata()["texts"])
                frames.append(
                    pd.DataFrame(
                        {
                            "text": np.arange(shard["start"], shard["start"] + shard["count"]),
                            "prompt": [p for p, _ in pairs],
                            "completion": [c for _, c in pairs],
                            "prefix_tokens": f.get_tensor("prefix_tokens"),
                            "completion_tokens": f.get_tensor("completion_tokens"),
                        }
                    )
                )
        return pd.concat(frames, ignore_index=True)

    def array(self, site: str, read: str, layers: Sequence[int] | None = None) -> np.ndarray:
        """Activations of `site` at `read`: -> (n, layer, d_model) float32, layers in the order asked (all by default)."""
        from safetensors import safe_open

        if site not in self.sites:
            raise ValueError(f"site {site!r} was not collected in {self.path}; it has {list(self.sites)} (all sites: {list(SITES)})")
        if read not in self.reads:
            raise ValueError(f"read {read!r} was not collected in {self.path}; it has {list(self.reads)}")
        stored = self.layers[site]
        chosen = stored if layers is None else tuple(int(layer) for layer in layers)
        unknown = [layer for layer in chosen if layer not in stored]
        if unknown:
            raise ValueError(f"{site} has no layer(s) {unknown}; its layers are {list(stored)}")
        columns = [stored.index(layer) for layer in chosen]
        out = np.empty((len(self), len(columns), self.d_model), dtype=np.float32)  # (n, layer, d_model)
        for shard in self._index["shards"]:
            with safe_open(self.path / shard["file"], framework="np") as f:
                part = f.get_tensor(_tensor_name(site, read))  # (count, stored layer, d_model)
            out[shard["start"] : shard["start"] + shard["count"]] = part[:, columns]
        return out

    def hidden_states(self, read: str) -> np.ndarray:
        """resid_pre layers 0..L-1 then resid_final: -> (n, L+1, d_model), HF's `output_hidden_states` order."""
        missing = [s for s in ("resid_pre", "resid_final") if s not in self.sites]
        if missing:
            raise ValueError(f"hidden_states needs the sites resid_pre and resid_final; {self.path} lacks {missing}")
        return np.concatenate([self.array("resid_pre", read), self.array("resid_final", read)], axis=1)


def _tensor_name(site: str, read: str) -> str:
    return f"{site}/{read}"


def _read_index(folder: Path) -> dict[str, Any] | None:
    path = folder / INDEX_JSON
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RunFormatError(f"{path}: unreadable ({err}); delete the folder {folder} and collect the activations again") from err
    if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
        raise RunFormatError(f"{path} is not an rlhf-lens activation index (format {STORE_FORMAT!r}); pick another out_dir")
    if index.get("version") != STORE_VERSION:
        raise RunFormatError(
            f"{path}: activation store version {index.get('version')!r} is not the one this rlhf-lens reads ({STORE_VERSION}); "
            "delete the folder and collect the activations again"
        )
    for shard in index.get("shards", []):  # a shard is a plain file of this folder with a header that tells the truth
        name = shard.get("file") if isinstance(shard, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise RunFormatError(f"{path}: shard {name!r} is not a file name in {folder}; delete the folder and collect again")
        if (folder / name).is_file():
            check_safetensors_header(folder / name)
    return index


# --------------------------------------------------------------------------- the reward model's read-out


class RewardReadout(NamedTuple):
    """A scalar reward model's reward as a linear read-out of the `resid_final` site at the `last` read:

        reward = direction . resid_final[L] at the last token + bias

    resid_final is the residual *after* the final layer norm, its gain and bias included (HF's last hidden state),
    so the direction lives there; in resid_pre or resid_post coordinates the reward is not linear (the norm divides by the scale).
    `bias` folds the score head's bias (GPT-2, Llama and GPT-NeoX heads have none) and minus the centring
    offset (`config.reward_offset`) together, so this equals `models.score_texts`.
    """

    direction: np.ndarray
    """(d_model,) float32, the score head's weight row."""
    bias: float

    def rewards(self, resid_final_last: np.ndarray) -> np.ndarray:
        """(n, d_model) or (n, 1, d_model) as `store.array("resid_final", "last")` gives it -> (n,) rewards."""
        final = np.asarray(resid_final_last, dtype=np.float32)
        if final.ndim == 3:
            final = final[:, 0]
        return final @ self.direction + np.float32(self.bias)


def reward_readout(reward_model: torch.nn.Module | str | Path) -> RewardReadout:
    """The reward model's read-out direction and bias in `resid_final` coordinates (see `RewardReadout`)."""
    if isinstance(reward_model, str | Path):
        from rlhf_lens.runs import load_hf_folder

        reward_model = load_hf_folder(_checked_folder(reward_model), "score")
    models.require_score_head(reward_model)
    weight = reward_model.score.weight.detach().float().cpu()  # (labels, d_model)
    if weight.shape[0] != 1:
        raise ValueError(f"the score head has {weight.shape[0]} outputs; a scalar reward model has one (num_labels=1)")
    head_bias = reward_model.score.bias
    bias = (float(head_bias.detach().float()[0]) if head_bias is not None else 0.0) - float(
        getattr(reward_model.config, "reward_offset", 0.0)
    )
    return RewardReadout(direction=weight[0].numpy(), bias=bias)


# --------------------------------------------------------------------------- collecting


def collect_activations(
    model_or_folder: torch.nn.Module | str | Path,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    sites: Sequence[str] = DEFAULT_SITES,
    reads: Sequence[str] = READS,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    shard_size: int | None = None,
    backend: str = "auto",
    device: str | torch.device | None = None,
    quiet: bool = False,
) -> ActivationStore:
    """Activations of every layer at `sites` and `reads` for each (prompt, completion) pair, written to `out_dir`.

    `model_or_folder`: a checkpoint folder (policy or reward; `Run.checkpoint(stage, tag).path`) or an HF model
    (`*ForCausalLM` or `*ForSequenceClassification`). `tokenizer`: the model's (None: the folder's own).
    Inputs are BOS + prompt + completion as `models.reward_input_parts` builds them, cut from the left to the
    model's context; batches are right-padded with `models.position_ids(mask)`.

    `out_dir`: where the shards go (`Run.analysis_dir(key)`; `run_activations` does that). A complete store of
    the same inputs there is returned as it is, an incomplete one is finished, another one is refused. None: a
    temporary folder deleted with the store. `shard_size`: texts per shard (None: as many as fit in 16 MB); memory
    stays at about one shard plus one batch whatever the number of texts. `backend`: "auto", "bridge" or "hooks"
    (module docstring). `device`: where a folder's model runs (None: CUDA when there is one); a model object stays
    where it is.
    """
    sites, reads = _check_request(prompts, completions, sites, reads, batch_size, shard_size, backend)
    is_folder = isinstance(model_or_folder, str | Path)
    folder = _checked_folder(model_or_folder) if is_folder else None
    if tokenizer is None:
        if folder is None:
            raise ValueError("pass the model's tokenizer (only a checkpoint folder can supply its own)")
        tokenizer = models.load_tokenizer(folder)
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos_token) first")

    config = model_or_folder.config if folder is None else _config(folder)
    n_layers, d_model = int(config.num_hidden_layers), int(config.hidden_size)
    layers = {site: [n_layers] if site == "resid_final" else list(range(n_layers)) for site in sites}
    if shard_size is None:
        text_bytes = sum(len(layers[s]) for s in sites) * len(reads) * d_model * 4
        shard_size = max(batch_size, min(MAX_SHARD_TEXTS, SHARD_BYTES // text_bytes))
    model_id = (
        {"weights_sha256": _folder_weights_sha(folder)} if folder is not None else {"parameters_sha256": _parameters_sha(model_or_folder)}
    )
    fingerprint = _fingerprint(model_id, tokenizer, prompts, completions, sites, reads, shard_size)

    owned = out_dir is None
    folder_out = Path(tempfile.mkdtemp(prefix="rlhf-lens-activations-")) if owned else Path(out_dir)
    folder_out.mkdir(parents=True, exist_ok=True)
    index = _start_index(folder_out, fingerprint)
    if index is None or not index["complete"]:  # a complete store of the same inputs is read back without the model
        if folder is not None:
            device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
            runner = _folder_runner(folder, tokenizer, sites, backend, device)
        else:
            runner = _object_runner(model_or_folder, tokenizer, sites, backend)
        models.check_vocab_fits(runner.hf_model, tokenizer, where=str(folder or type(model_or_folder).__name__))
        if index is None:
            index = {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "complete": False,
                "fingerprint": fingerprint,
                "n_texts": len(prompts),
                "shard_size": shard_size,
                "sites": layers,
                "reads": list(reads),
                "layer_naming": LAYER_NAMING,
                "backend": runner.backend,
                "model": {
                    "source": str(folder) if folder is not None else type(model_or_folder).__name__,
                    "architecture": runner.architecture,
                    "n_layers": n_layers,
                    "d_model": d_model,
                    **model_id,
                },
                "shards": [],
            }
        training = runner.hf_model.training  # a model built from a config starts in train mode (dropout on)
        runner.hf_model.eval()
        try:
            _collect_shards(runner, tokenizer, prompts, completions, index, folder_out, batch_size, quiet)
        finally:
            runner.hf_model.train(training)
    store = ActivationStore(folder_out)
    if owned:
        store._cleanup = weakref.finalize(store, shutil.rmtree, folder_out, True)
    return store


def run_activations(
    run: Run,
    stage: str,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    tag: str = "final",
    sites: Sequence[str] = DEFAULT_SITES,
    reads: Sequence[str] = READS,
    batch_size: int = 64,
    backend: str = "auto",
    quiet: bool = False,
) -> ActivationStore:
    """`collect_activations` on checkpoint `tag` of `stage`, cached in `run.analysis_dir(key)`; the key covers the
    stage's checkpoints, the texts, sites and reads, so a second call with the same inputs reads the shards back."""
    from rlhf_lens.runs import analysis_key

    checkpoint = run.checkpoint(stage, tag)
    params = {"stage": stage, "tag": tag, "sites": list(sites), "reads": list(reads), "texts": _texts_sha(prompts, completions)}
    key = analysis_key("activations", params, run.fingerprints(checkpoints_of=[stage]))
    return collect_activations(
        checkpoint.path,
        run.load_tokenizer(stage, tag),
        prompts,
        completions,
        sites=sites,
        reads=reads,
        out_dir=run.analysis_dir(key),
        batch_size=batch_size,
        backend=backend,
        quiet=quiet,
    )


def _check_request(prompts, completions, sites, reads, batch_size, shard_size, backend) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if isinstance(sites, str) or isinstance(reads, str):
        raise TypeError("sites and reads are sequences of names, e.g. sites=('resid_pre',), reads=('last',)")
    sites, reads = tuple(dict.fromkeys(sites)), tuple(dict.fromkeys(reads))
    unknown = [s for s in sites if s not in SITES]
    if unknown or not sites:
        raise ValueError(
            f"unknown site(s) {unknown}; choose from {list(SITES)}" if unknown else f"no sites given; choose from {list(SITES)}"
        )
    unknown = [r for r in reads if r not in READS]
    if unknown or not reads:
        raise ValueError(
            f"unknown read(s) {unknown}; choose from {list(READS)}" if unknown else f"no reads given; choose from {list(READS)}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if batch_size < 1 or (shard_size is not None and shard_size < 1):
        raise ValueError(f"batch_size and shard_size must be positive, got {batch_size} and {shard_size}")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt")
    if len(prompts) == 0:
        raise ValueError("no texts: pass at least one (prompt, completion) pair")
    if "completion_mean" in reads:
        empty = [i for i, c in enumerate(completions) if not c]
        if empty:
            raise ValueError(
                f"{len(empty)} completion(s) are empty (first at indices {empty[:5]}); completion_mean needs at least one "
                "completion token: drop them, or read only reads=('last',)"
            )
    return sites, reads


def _checked_folder(folder: str | Path) -> Path:
    """A model folder: config.json and vetted safetensors weights (pickles refused), else a clear error."""
    from rlhf_lens.runs.weights import safetensors_weight_files

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass a checkpoint folder (a save_pretrained folder) or a model")
    read_model_config(folder)  # RunLookupError naming config.json when this is not a model folder
    safetensors_weight_files(folder)
    return folder


def _config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def _start_index(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    """The index to continue in `folder` (same inputs), None to start afresh, or an error for other activations."""
    index = _read_index(folder)
    if index is None:
        return None
    if index.get("fingerprint") != fingerprint:
        raise FileExistsError(
            f"{folder} already holds activations of other inputs (model, tokenizer, texts, sites, reads or shard size differ); "
            "pass another out_dir, or delete that folder"
        )
    missing = [s["file"] for s in index["shards"] if not (folder / s["file"]).is_file()]
    if missing:
        raise RunFormatError(f"{folder}: shards {missing} listed in {INDEX_JSON} are missing; delete the folder and collect again")
    return index


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class _Batch:
    """A right-padded batch and the positions its reads take."""

    ids: torch.Tensor  # (batch, seq)
    mask: torch.Tensor  # (batch, seq)
    positions: torch.Tensor  # (batch, seq)
    last: torch.Tensor  # (batch,) position of the last real token
    completion_weights: torch.Tensor  # (batch, seq) 1/len(completion) on completion tokens, 0 elsewhere


def _make_batch(parts: Sequence[tuple[list[int], list[int]]], pad_id: int, device) -> _Batch:
    ids, mask = models.pad_right([p + c for p, c in parts], pad_id)  # (batch, seq)
    ids, mask = ids.to(device), mask.to(device)
    offsets = torch.arange(ids.shape[1], device=device)[None, :]  # (1, seq)
    starts = torch.tensor([len(p) for p, _ in parts], device=device)[:, None]  # (batch, 1)
    lengths = torch.tensor([len(c) for _, c in parts], device=device)[:, None]
    in_completion = (offsets >= starts) & (offsets < starts + lengths)  # (batch, seq)
    weights = in_completion.float() / lengths.clamp(min=1).float()
    return _Batch(ids, mask, models.position_ids(mask), mask.sum(1) - 1, weights)


def _read(act: torch.Tensor, batch: _Batch, read: str) -> torch.Tensor:
    """(batch, seq, d_model) -> (batch, d_model) at `read`."""
    act = act.float()
    if read == "last":
        return act[torch.arange(act.shape[0], device=act.device), batch.last]
    return torch.einsum("bs,bsd->bd", batch.completion_weights, act)


def _collect_shards(runner, tokenizer, prompts, completions, index, folder: Path, batch_size: int, quiet: bool) -> None:
    """Fill the shards the index does not list yet, writing each shard and then the index (atomically)."""
    from tqdm.auto import tqdm

    n, shard_size = len(prompts), index["shard_size"]
    start = sum(s["count"] for s in index["shards"])
    batches = sum(math.ceil(min(shard_size, n - s) / batch_size) for s in range(start, n, shard_size))
    with tqdm(total=batches, desc="activations", unit="batch", disable=quiet, leave=False) as bar:
        for shard_start in range(start, n, shard_size):
            shard_end = min(n, shard_start + shard_size)
            shard_prompts, shard_completions = list(prompts[shard_start:shard_end]), list(completions[shard_start:shard_end])
            parts = models.reward_input_parts(tokenizer, shard_prompts, shard_completions, runner.context)
            tensors = _shard_tensors(runner, parts, index, tokenizer.pad_token_id, batch_size, bar)
            texts = json.dumps([[p, c] for p, c in zip(shard_prompts, shard_completions)], ensure_ascii=False)
            name = f"shard-{len(index['shards']):05d}.safetensors"
            _write_shard(folder / name, tensors, texts)
            del tensors
            index["shards"].append({"file": name, "start": shard_start, "count": shard_end - shard_start})
            index["complete"] = shard_end == n
            atomic_write_json(folder / INDEX_JSON, index)


def _shard_tensors(runner, parts, index, pad_id: int, batch_size: int, bar) -> dict[str, np.ndarray]:
    """One shard's tensors: "<site>/<read>" (count, layer, d_model) for each site and read, and the token counts."""
    sites, reads, d_model = index["sites"], index["reads"], index["model"]["d_model"]
    buffers = {
        _tensor_name(site, read): np.zeros((len(parts), len(layers), d_model), dtype=np.float32)  # (count, layer, d_model)
        for site, layers in sites.items()
        for read in reads
    }
    # Length-sorted batches waste less on padding; each row lands back at its own place in the shard.
    order = sorted(range(len(parts)), key=lambda i: len(parts[i][0]) + len(parts[i][1]))
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        batch = _make_batch([parts[i] for i in rows], pad_id, runner.device)

        def store(site: str, layer: int, act: torch.Tensor, batch=batch, rows=rows) -> None:
            column = sites[site].index(layer)
            for read in reads:
                buffers[_tensor_name(site, read)][rows, column] = _read(act, batch, read).cpu().numpy()

        with torch.no_grad():
            runner.run(batch, store)
        bar.update(1)
    buffers["prefix_tokens"] = np.array([len(p) for p, _ in parts], dtype=np.int64)
    buffers["completion_tokens"] = np.array([len(c) for _, c in parts], dtype=np.int64)
    return buffers


def _write_shard(path: Path, tensors: dict[str, np.ndarray], texts: str) -> None:
    """Write a shard atomically (temp name, fsync, rename), streamed from the buffers: no copy of the shard in memory."""
    from safetensors.numpy import save_file

    from rlhf_lens.runs.atomic import fsync_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        save_file(tensors, tmp, metadata={"texts": texts})
        fsync_file(tmp)
        rename(path.parent, "", tmp.name, path.name)  # a link planted at the shard's name is refused, not replaced
    except BaseException as err:
        with contextlib.suppress(OSError):
            remove(path.parent, tmp.name)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path, sum(t.nbytes for t in tensors.values()) + len(texts.encode("utf-8"))) from err
        raise


# --------------------------------------------------------------------------- backends

Store = Callable[[str, int, torch.Tensor], None]
"""store(site, layer, act (batch, seq, d_model)): called once per site and layer during a forward pass."""


class _StopForward(Exception):
    """Raised by the last hook of a forward pass: nothing after the final norm is needed (no vocab logits)."""


class _BridgeRunner:
    """A TransformerBridge read through its hook points."""

    backend = "bridge"

    def __init__(self, bridge, sites: Sequence[str]):
        self.bridge, self.sites = bridge, list(sites)
        self.hf_model = bridge.original_model
        self.n_layers, self.d_model = int(bridge.cfg.n_layers), int(bridge.cfg.d_model)
        self.context = models.context_length(self.hf_model)
        self.architecture = str(getattr(bridge.cfg, "architecture", None) or type(self.hf_model).__name__)
        self.device = next(self.hf_model.parameters()).device
        names = [_BRIDGE_HOOKS[s].format(layer=layer) for s in [*self.sites, "resid_final"] for layer in range(self.n_layers)]
        missing = sorted({n for n in names if n not in bridge.hook_dict})
        if missing:
            raise NotImplementedError(f"the bridge of {self.architecture} has no hook points {missing[:4]}")

    def run(self, batch: _Batch, store: Store) -> None:
        def hook(site: str, layer: int, stop: bool = False):
            def fn(act, hook):
                if site in self.sites:
                    store(site, layer, act)
                if stop:
                    raise _StopForward

            return fn

        fwd_hooks = [
            (_BRIDGE_HOOKS[site].format(layer=layer), hook(site, layer))
            for site in self.sites
            if site != "resid_final"
            for layer in range(self.n_layers)
        ]
        fwd_hooks.append((_BRIDGE_HOOKS["resid_final"], hook("resid_final", self.n_layers, stop=True)))
        try:
            with self.bridge.hooks(fwd_hooks=fwd_hooks):
                self.bridge(batch.ids, attention_mask=batch.mask, position_ids=batch.positions, return_type=None)
        except _StopForward:
            return
        raise RuntimeError(f"the bridge of {self.architecture} never ran its final norm (ln_final.hook_out); use backend='hooks'")


class _HookRunner:
    """An HF model's backbone read with plain PyTorch hooks on its blocks, attention and MLP modules."""

    backend = "hooks"

    def __init__(self, model: torch.nn.Module, sites: Sequence[str]):
        self.hf_model, self.sites = model, list(sites)
        self.backbone = model.base_model
        config = model.config
        self.n_layers, self.d_model = int(config.num_hidden_layers), int(config.hidden_size)
        self.context = models.context_length(model)
        self.architecture = type(model).__name__
        self.device = next(model.parameters()).device
        blocks = _find_blocks(self.backbone, self.n_layers, self.architecture)
        children = {"attn_out": _ATTENTION_NAMES, "mlp_out": _MLP_NAMES}
        # (module, site, layer): resid_pre is read at a block's input, the other sites at a module's output.
        self.points = [
            (block if site in ("resid_pre", "resid_post") else _child(block, children[site], site, self.architecture), site, layer)
            for layer, block in enumerate(blocks)
            for site in self.sites
            if site != "resid_final"
        ]

    def run(self, batch: _Batch, store: Store) -> None:
        handles = []
        try:
            for module, site, layer in self.points:
                if site == "resid_pre":
                    handles.append(module.register_forward_pre_hook(_pre_hook(store, site, layer), with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(_out_hook(store, site, layer)))
            out = self.backbone(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.positions)
        finally:
            for handle in handles:
                handle.remove()
        if "resid_final" in self.sites:
            store("resid_final", self.n_layers, out.last_hidden_state)


def _pre_hook(store: Store, site: str, layer: int):
    def fn(module, args, kwargs):
        store(site, layer, args[0] if args else kwargs["hidden_states"])

    return fn


def _out_hook(store: Store, site: str, layer: int):
    def fn(module, args, output):
        store(site, layer, output[0] if isinstance(output, tuple) else output)

    return fn


def _find_blocks(backbone: torch.nn.Module, n_layers: int, architecture: str) -> torch.nn.ModuleList:
    for name in ("h", "layers", "blocks"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) == n_layers:
            return blocks
    for blocks in backbone.children():
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) == n_layers:
            return blocks
    raise NotImplementedError(f"{architecture}: found no list of {n_layers} transformer blocks in its backbone; activations cannot be read")


def _child(block: torch.nn.Module, names: tuple[str, ...], site: str, architecture: str) -> torch.nn.Module:
    for name in names:
        module = getattr(block, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise NotImplementedError(f"{architecture}: its blocks have no submodule named {' / '.join(names)}, so {site} cannot be read")


def _folder_runner(folder: Path, tokenizer, sites: Sequence[str], backend: str, device):
    if backend in ("auto", "bridge"):
        try:
            return _BridgeRunner(_boot_bridge(folder, tokenizer, device), sites)
        except Exception as err:  # the bridge raises many types for architectures it cannot boot
            if backend == "bridge":
                raise
            warnings.warn(
                f"TransformerBridge cannot boot {folder} ({type(err).__name__}: {err}); reading it with PyTorch hooks instead",
                stacklevel=3,
            )
    from rlhf_lens.runs import load_hf_folder

    return _HookRunner(load_hf_folder(folder, _head(folder)).to(device), sites)


def _object_runner(model: torch.nn.Module, tokenizer, sites: Sequence[str], backend: str):
    if backend != "bridge":
        return _HookRunner(model, sites)
    # The bridge rebuilds the modules of the HF model it is handed, so it boots a saved copy instead.
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="rlhf-lens-bridge-") as folder:
        model.save_pretrained(folder)
        return _BridgeRunner(_boot_bridge(Path(folder), tokenizer, device), sites)


def _boot_bridge(folder: Path, tokenizer, device):
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    # Token ids go in, so the bridge's tokenizer is never used; but booting normalises one and, for a tokenizer
    # not loaded from a folder, reads an absent init_kwargs["name_or_path"]. Give it a copy that is complete.
    bridge_tokenizer = copy.deepcopy(tokenizer)
    bridge_tokenizer.init_kwargs = {**tokenizer.init_kwargs, "name_or_path": str(folder), "add_bos_token": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a reward folder's unused score head, a fresh lm_head: expected
        return TransformerBridge.boot_transformers(str(folder), device=str(device), tokenizer=bridge_tokenizer)


def _head(folder: Path) -> str:
    """How a folder loads for the hooks backend: only its backbone runs, so any head that holds it will do."""
    meta = read_checkpoint_meta(folder)
    if meta.get("kind") == "reward" and meta.get("reward_kind") != "generative":
        return "score"
    architectures = read_model_config(folder).get("architectures") or []
    return "score" if any(a.endswith("ForSequenceClassification") for a in architectures) else "causal_lm"


# --------------------------------------------------------------------------- fingerprints


def _texts_sha(prompts: Sequence[str], completions: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for prompt, completion in zip(prompts, completions):
        digest.update(json.dumps([prompt, completion], ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _folder_weights_sha(folder: Path) -> str:
    from rlhf_lens.runs.weights import weights_sha256

    return weights_sha256(folder)


def _parameters_sha(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _fingerprint(model_id, tokenizer, prompts, completions, sites, reads, shard_size) -> str:
    """What the stored activations depend on: weights, vocabulary, texts, sites, reads and shard boundaries."""
    request = {
        "model": model_id,
        "vocab": hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode("utf-8")).hexdigest(),
        "bos": tokenizer.bos_token_id,
        "texts": _texts_sha(prompts, completions),
        "sites": list(sites),
        "reads": list(reads),
        "shard_size": shard_size,
        "version": STORE_VERSION,
    }
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()
