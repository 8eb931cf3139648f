#!/usr/bin/env bash
# One run on a lent GPU machine (its python3 has torch, triton, numba, scikit-image):
# the CUDA tests, a profile of the tokenizer, then the GPU benchmark sections. Logs and tables go to $OUT.
set -u
out=${OUT:-benchmarks/device-out}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$out/gpu.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/crosscutting/test_cuda.py tests/models/test_vit_costmodel.py \
  2>&1 | tee "$out/pytest-cuda.log"
timeout 120 python3 -m benchmarks.profile_cuda 2>&1 | tee "$out/profile.log"
timeout 300 python3 -m benchmarks.run --sections cuda ${BENCH_ARGS:---gpu-vit} --out "$out/RESULTS-gpu.md" 2>&1 | tee "$out/bench.log"
