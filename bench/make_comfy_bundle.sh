#!/usr/bin/env bash
# Trimmed copy of the ComfyUI tree (.cache/comfyui) for GPU benchmark runs, which must carry what they import
# (the device machine has no network): no tokenizer data, no tests, no API nodes. Output: .bench_comfy/ (ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .bench_comfy
mkdir -p .bench_comfy
tar -C .cache/comfyui --exclude='./comfy/text_encoders/*_tokenizer' --exclude='./comfy/sd1_tokenizer' --exclude='tests' --exclude='tests-unit' --exclude='comfy_api_nodes' \
    --exclude='__pycache__' --exclude='*.png' --exclude='*.jpg' -cf - . | tar -C .bench_comfy -xf -
du -sh .bench_comfy
