"""Build the starting point of a run: a BPE tokenizer trained on the corpus and
a fresh model from a config, or a local Hugging Face folder (any causal LM)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlhf_lens.models import check_vocab_fits, fuse_activations, load_causal_lm, load_tokenizer
from rlhf_lens.training.config import ModelConfig

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on `texts`; EOS doubles as BOS and padding (GPT-2 convention)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)


def build_model(config: ModelConfig, tokenizer, *, seed: int) -> torch.nn.Module:
    """A freshly initialised causal LM of `config.arch`, sized to the tokenizer."""
    torch.manual_seed(seed)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if config.arch not in ARCHITECTURES:  # guarded by ModelConfig validation
        raise ValueError(f"model.arch {config.arch!r} is not supported")
    hf_config, model_class = ARCHITECTURES[config.arch](config, len(tokenizer), ids)
    return fuse_activations(model_class(hf_config))


def gpt2(config: ModelConfig, vocab: int, ids: dict):
    import transformers as tf

    hf_config = tf.GPT2Config(
        vocab_size=vocab,
        n_positions=config.context,
        n_embd=config.d_model,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        **ids,
    )
    return hf_config, tf.GPT2LMHeadModel


def llama(config: ModelConfig, vocab: int, ids: dict):
    import transformers as tf

    hf_config = tf.LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=config.context,
        hidden_size=config.d_model,
        intermediate_size=4 * config.d_model,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=max(1, config.n_head // 2),
        attention_dropout=config.dropout,
        tie_word_embeddings=True,
        **ids,
    )
    return hf_config, tf.LlamaForCausalLM


def gpt_neox(config: ModelConfig, vocab: int, ids: dict):
    import transformers as tf

    hf_config = tf.GPTNeoXConfig(
        vocab_size=vocab,
        max_position_embeddings=config.context,
        hidden_size=config.d_model,
        intermediate_size=4 * config.d_model,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        attention_dropout=config.dropout,
        hidden_dropout=config.dropout,
        **ids,
    )
    return hf_config, tf.GPTNeoXForCausalLM


ARCHITECTURES = {"gpt2": gpt2, "llama": llama, "gpt_neox": gpt_neox}
"""model.arch -> (ModelConfig, vocab size, special token ids) -> (HF config, HF causal-LM class)."""


def load_base_model(folder: str):
    """A local HF causal-LM folder with its own tokenizer (the `model.base_model` option)."""
    model = load_causal_lm(folder)
    tokenizer = load_tokenizer(folder)
    check_vocab_fits(model, tokenizer, where=folder)
    return model, tokenizer
