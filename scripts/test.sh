#!/usr/bin/env bash
# The test command (README): builds the environment from nothing if needed, then runs the whole suite on the CPU
# (Triton kernels through Triton's interpreter; GPU-only tests skip). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
bash scripts/install_browser.sh || echo "chromium could not be installed: the browser test will skip"
exec .venv/bin/python -m pytest tests -q "$@"
