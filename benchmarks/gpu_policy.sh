#!/usr/bin/env bash
# On one NVIDIA GPU, side by side: (1) generation only, the lean decoder (bf16, CUDA graphs) against HF `generate`
# (eager sampling) and `models.sample`, on a random GPT-2-small-sized model (batch $GEN_BATCH x $TOKENS tokens);
# (2) GRPO throughput, our policy stage against TRL's GRPOTrainer, GPT-2-small-sized policy (12 layers, d_model 768,
# 12 heads, context 96), CUDA, bf16 autocast; (3) the `gpu`-marked tests (the CUDA decoder and policy stage).
#
# Run from anywhere:   benchmarks/gpu_policy.sh
# Writes:              benchmarks/results/gpu_policy.json (and prints the GRPO table: steps/s, completion tokens/s, ours/TRL)
# Budget:              about 5 minutes on an H200 box with 16 cores once the venv exists. The untimed setup (our base,
#                      SFT and reward stages) runs on the CPU: only policy stages take a device in rlhf_lens, so it
#                      is kept short (base 100 steps, SFT 40 steps, batch 8) and uses all cores (--setup-threads).
#
# Environment: a venv at $VENV (default .venv-gpu) with `pip install -e .[bench]`, created on the first run.
# The GPU machine may have no internet. Then fetch the wheels on a machine that has it, with the GPU machine's
# Python version and platform, and copy the wheels/ folder next to pyproject.toml; this script then installs
# from it with --no-index:
#     python3 -m pip download -d wheels/ setuptools wheel '.[bench]'
#     # from another platform add: --python-version 3.11 --platform manylinux_2_28_x86_64 --only-binary=:all:
# (PyPI's Linux torch wheel is the CUDA build; it and its nvidia-* dependencies are a few GB.)
# Knobs (environment): VENV, STEPS (GRPO steps, default 12), PROMPTS (B, 16), GROUP (G, 8), TOKENS (T, 64),
# GEN_BATCH (generation-only batch, 512), SKIP_GRPO / SKIP_TESTS (set to 1 to leave a part out),
# THREADS (timed part, 4), SETUP_THREADS (setup, number of cores).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv-gpu}
STEPS=${STEPS:-12}
PROMPTS=${PROMPTS:-16}
GROUP=${GROUP:-8}
TOKENS=${TOKENS:-64}
GEN_BATCH=${GEN_BATCH:-512}
SKIP_GRPO=${SKIP_GRPO:-0}
SKIP_TESTS=${SKIP_TESTS:-0}
THREADS=${THREADS:-4}
SETUP_THREADS=${SETUP_THREADS:-$(nproc)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_DISABLED=true TOKENIZERS_PARALLELISM=false

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
    if [[ -d wheels ]]; then
        "$VENV/bin/python" -m pip install --no-index --find-links wheels/ --upgrade pip setuptools wheel || true
        "$VENV/bin/python" -m pip install --no-index --find-links wheels/ -e '.[bench]'
    else
        "$VENV/bin/python" -m pip install --upgrade pip setuptools wheel
        "$VENV/bin/python" -m pip install -e '.[bench]'
    fi
fi
PY="$VENV/bin/python"

echo "== nvidia-smi"
nvidia-smi
"$PY" - <<'EOF'
import torch, transformers, trl
assert torch.cuda.is_available(), "torch sees no CUDA device (a CPU-only torch wheel in the venv?)"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, trl {trl.__version__}, "
      f"device {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
EOF

mkdir -p benchmarks/results
echo "== generation only: lean decoder vs HF generate vs models.sample, random gpt2small, bf16, $GEN_BATCH x $TOKENS tokens"
"$PY" benchmarks/decode_rates.py --random gpt2small --device cuda --bf16 --batch "$GEN_BATCH" --max-new-tokens "$TOKENS" \
    | tee benchmarks/results/gpu_decode_rates.txt

if [[ "$SKIP_TESTS" != 1 ]]; then
    echo "== gpu-marked tests"
    "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/integration/test_decoding_gpu.py tests/integration/test_gpu.py
fi

if [[ "$SKIP_GRPO" != 1 ]]; then
    echo "== GRPO: ours vs TRL on CUDA, bf16, gpt2small, $STEPS steps of $PROMPTS prompts x $GROUP completions x <= $TOKENS tokens"
    start=$(date +%s)
    "$PY" benchmarks/policy_vs_trl.py --device cuda --bf16 --sizes gpt2small --only grpo \
        --grpo-steps "$STEPS" --prompts-per-step "$PROMPTS" --group-size "$GROUP" --max-new-tokens "$TOKENS" \
        --threads "$THREADS" --setup-threads "$SETUP_THREADS" --out benchmarks/results/gpu_policy.json
    echo "== done in $(( $(date +%s) - start ))s; results in benchmarks/results/gpu_policy.json"
fi
