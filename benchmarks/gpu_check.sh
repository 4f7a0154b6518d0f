#!/usr/bin/env bash
# The CUDA path end to end (data, official path, trial cost, bf16 against fp32, latency, torchrun, API) in one run
# that writes one JSON file of results and exits non-zero when a step fails; see benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh [--out gpu_check.json]        # ResNet-50 at 224 px on CUDA: under 10 minutes, one GPU
#   benchmarks/gpu_check.sh --device cpu --tiny           # the smoke run on CPU (CI): a couple of minutes
#
# The Python is $PYTHON, else the checkout's .venv, else python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$root/benchmarks/gpu_check.py" "$@"
