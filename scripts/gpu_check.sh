#!/usr/bin/env bash
# The GPU checks, as one run on a CUDA machine that has torch but not this project's environment:
# the `gpu` tests, then the full-size benchmark (bench/gpu.py: BLIP-2 at opt-2.7b and flan-t5-xl
# sizes, random weights, fp16/int8/int4, the worker's batch path against a one-image generate loop),
# then the tiny-model benchmark. Wheels the machine lacks (bitsandbytes, this project's
# transformers, pydantic) come from .whl/ (scripts/gpu_wheels.sh fills it; carry it along).
#
#     scripts/gpu_check.sh [OUT_DIR]        # about 7 minutes on an H100/H200
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu-check}}"
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__)" | tee -a "$out/gpu.txt"
python3 -m pytest --noconftest -p tests.support.model_fixtures -p no:cacheprovider -o addopts="" -m gpu -v \
    tests/blip2/test_gpu.py 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}
timeout 480 python3 -m bench.gpu --tmp /tmp 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/bench-gpu.log"
python3 bench/inference.py --device cuda --data-dir /tmp/bench-data --batch 8 --tokens 20 2>&1 | tee "$out/bench-cuda.log"
exit "$tests"
