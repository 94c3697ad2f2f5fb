"""Tiny random HF models of the three supported architectures (GPT-2, Llama, GPT-NeoX), built from configs sized
to a tokenizer: no download. Shared by the analyses' unit tests."""

from __future__ import annotations

import torch

ARCHITECTURES = ("gpt2", "llama", "neox")


def tiny_config(arch: str, tokenizer, **extra):
    import transformers

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    common = dict(vocab_size=len(tokenizer), initializer_range=0.2, **ids, **extra)
    if arch == "gpt2":
        return transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=64, **common)
    size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64)
    if arch == "llama":
        return transformers.LlamaConfig(num_key_value_heads=2, **size, **common)
    return transformers.GPTNeoXConfig(**size, **common)  # parallel residual by default


def tiny_model(arch: str, tokenizer, *, head: str = "causal"):
    import transformers

    torch.manual_seed(0)
    auto = transformers.AutoModelForCausalLM if head == "causal" else transformers.AutoModelForSequenceClassification
    extra = {} if head == "causal" else {"num_labels": 1}
    return auto.from_config(tiny_config(arch, tokenizer, **extra)).eval()
