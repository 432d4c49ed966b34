#!/usr/bin/env bash
# Installs Debian's chromium for the browser tests (tests/test_browser_*.py drive it through Playwright's Python
# package, pointed at /usr/bin/chromium, so no browser is ever downloaded). Idempotent: exits early when the binary
# already runs. Needs root (CI runs as root; elsewhere sudo is used when available).
set -euo pipefail
if [ -x /usr/bin/chromium ] && /usr/bin/chromium --version >/dev/null 2>&1; then
  echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null)"
  exit 0
fi
AS_ROOT=()
if [ "$(id -u)" -ne 0 ]; then AS_ROOT=(sudo); fi
"${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
/usr/bin/chromium --version
