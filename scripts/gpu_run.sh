#!/usr/bin/env bash
# Runs on a GPU machine (see scripts/gpu_prepare.sh), in one go: the GPU
# parity tests (every tensor op, the U-Net's pass and gradients, training
# steps and the samplers against the CPU; required to find the GPU), the
# Rust GPU benches and the PyTorch anchor on the same GPU.
# Results go to $OUT (or gpu-out/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
# NVRTC from the machine's PyTorch environment (its nvidia-cuda-nvrtc package).
NV="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)"
LIB="$(dirname "$(find "$NV" /usr/local/cuda* -name 'libnvrtc.so.13*' 2>/dev/null | head -1)" 2>/dev/null || true)"
export LD_LIBRARY_PATH="${LIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DDPM_FIXTURES="$PWD/tests/fixtures"
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/gpu.txt"

run() { # name, command...
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -3 "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
    echo "rc=$rc" | tee -a "$OUT/summary.txt"
}
run gpu-tests env DDPM_REQUIRE_GPU=1 gpu-bin/gpu-tests --test-threads 1
run rust-train-tiny gpu-bin/xtask bench train --preset tiny --batch 64 --steps 20 --device cuda
run rust-train-small gpu-bin/xtask bench train --preset small --batch 128 --steps 20 --device cuda
run rust-sample-small gpu-bin/xtask bench sample --preset small --batch 128 --steps 20 --device cuda
run torch-train-tiny python3 scripts/torch_bench.py train --preset tiny --batch 64 --device cuda --seconds 10
run torch-train-small python3 scripts/torch_bench.py train --preset small --batch 128 --device cuda --seconds 10
run torch-sample-small python3 scripts/torch_bench.py sample --preset small --batch 128 --device cuda --seconds 10
run torch-conv2d python3 scripts/torch_bench.py conv2d --device cuda
run rust-conv2d gpu-bin/conv2d-bench --bench
run rust-device gpu-bin/device-bench --bench
