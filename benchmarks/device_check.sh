#!/usr/bin/env bash
# The device check on a GPU machine, in one command (see benchmarks/device_check.py):
#   benchmarks/device_check.sh                        # the whole check, <= 8 min, CUDA
#   benchmarks/device_check.sh --sections train       # arguments go to device_check.py
# Results: JSON lines appended to benchmarks/results/device_check.jsonl, a summary table on stdout.
#
# Python: .venv if it has torch; else the first python3 on the machine that imports torch, with this
# checkout on PYTHONPATH (nothing is installed, so it works offline); else `make setup` (needs pip access).
set -euo pipefail
cd "$(dirname "$0")/.."

has_torch() { "$1" -c "import torch" >/dev/null 2>&1; }

PY=""
if [ -x .venv/bin/python ] && has_torch .venv/bin/python; then
    PY=.venv/bin/python
else
    for cand in python3 python; do
        if command -v "$cand" >/dev/null 2>&1 && has_torch "$cand"; then PY="$(command -v "$cand")"; break; fi
    done
fi
if [ -z "$PY" ]; then
    echo "device_check.sh: no Python with torch here; creating .venv (make setup, needs pip access)" >&2
    make setup >&2
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# what this Python lacks of corun's dependencies (each missing one costs the sections that need it)
"$PY" - <<'EOF' >&2
import importlib.util, torch
need = ["numpy", "PIL", "yaml", "tqdm", "safetensors", "skimage", "scipy", "matplotlib", "pyiqa", "torchvision"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
print(f"device_check.sh: python {__import__('sys').executable}, torch {torch.__version__}, "
      f"CUDA available {torch.cuda.is_available()}" + (f"; missing: {' '.join(missing)}" if missing else ""))
EOF
exec "$PY" benchmarks/device_check.py "$@"
