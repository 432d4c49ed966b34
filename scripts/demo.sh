#!/usr/bin/env bash
# The main job (README): patch a Flux model built from ComfyUI's classes at each precision and print which kernel
# ran, accuracy against the unpatched model and time. Tiny model on CPU; a larger one on a CUDA GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
