#!/usr/bin/env bash
# The one run command: bash scripts/serve.sh [--port 8080] [--model DIR]
# Builds the wasm engine into www/engine/ (scripts/build-wasm.sh), then serves the repository on
# http://localhost:8080 with the model DIR (default weights/tiny-lcm) at /model/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ZEPO_ROOT"
zepo_setup_node
bash scripts/build-wasm.sh
exec node scripts/serve.mjs "$@"
