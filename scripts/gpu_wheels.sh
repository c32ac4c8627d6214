#!/usr/bin/env bash
# The wheels a bare CUDA machine lacks for scripts/gpu_check.sh, into .whl/ (ignored by git; carry it).
# The device machines run Python 3.12 with torch, accelerate, safetensors and tokenizers, but not these.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
    "transformers==$(version transformers)" "bitsandbytes==$(version bitsandbytes)" \
    "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)" \
    "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)"
du -sh .whl && ls .whl
