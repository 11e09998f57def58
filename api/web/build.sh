#!/usr/bin/env bash
# Rebuilds the chat page's bundle (dist/, shipped in the wheel) from src/ with the packages pinned in package-lock.json,
# and records the SHA-256 of the sources it was built from (dist/SOURCES.sha256; tests/test_web.py checks both).
# Usage: bash api/web/build.sh [OUT_DIR]   (default: api/web/dist)
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
out="$(readlink -m "${1:-dist}")"
[ -d node_modules/vite ] || npm ci --no-audit --no-fund --loglevel=error
npx vite build --logLevel error --outDir "${out}"
python3 sources.py > "${out}/SOURCES.sha256"
