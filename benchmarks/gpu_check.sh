#!/usr/bin/env bash
# One prepared command for the device tool (a lent H100/H200): install the carried wheels,
# run the kernel tests on CUDA, then the kernel benchmark at the three GPU shapes.
# Results land under $OUT (logs, JSON). Budget: under 8 minutes.
#
# Here, once:  echo /.whl/ >> .git/info/exclude
#              python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                --implementation cp --platform manylinux_2_28_x86_64 -d .whl liger-kernel==0.8.5
# Then:        run(command="GVM_COMMIT=<short hash> bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#              (the device copy of the tree has no .git, so the results name the commit this way)
# Optional args are passed to bench_kernels.py (e.g. --shapes 8192x4096x151936 --cases ours,floor).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT" /tmp/site
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
ln -sfn "$PWD/kernels" /tmp/site/gvm_kernels           # the package name setup.py gives kernels/
export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv;
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$OUT/device.txt"

echo "== kernel tests on CUDA (compiled Triton vs float64 reference, bf16 and fp32)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/kernels -k cuda 2>&1 | tee "$OUT/kernel_tests.log" | tail -15

echo "== kernel benchmark"
timeout 300 python3 benchmarks/bench_kernels.py "$@" 2>&1 | tee "$OUT/bench_kernels.log"
cp benchmarks/results/bench_kernels.json "$OUT/" 2>/dev/null || true
