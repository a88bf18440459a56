#!/usr/bin/env bash
# Make .venv-serve: par-export[cpu,serve] with the versions CI tests (constraints.txt), except numpy.
# Triton's Python backend stub (nvidia-pytriton 0.7) is built against NumPy 1.x, so the serve extra
# asks numpy<2 and this environment drops constraints.txt's numpy 2 pin; every other pin applies
# (without them pip resolves the newest torch, a CUDA build of several GB, even on a CPU machine).
# Usage: tools/make_venv_serve.sh [extra pip arguments, e.g. --quiet]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-serve
grep -v '^numpy==' constraints.txt > .venv-serve/constraints.txt
.venv-serve/bin/pip install "$@" -c .venv-serve/constraints.txt -e ".[cpu,serve]"
