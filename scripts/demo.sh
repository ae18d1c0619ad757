#!/usr/bin/env bash
# The main job of the README: install, then run the CPU demo (output in runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
latentrl demo "$@"
