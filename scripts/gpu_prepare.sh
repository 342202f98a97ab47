#!/usr/bin/env bash
# Builds, on this (CPU) machine, everything a GPU machine runs: the GPU test
# binary (tests/gpu.rs: the parity checks of tests/parity/ on cuda:0, the same
# ones tests/emulated.rs runs on the emulated device in CI), the conv2d and
# device benches and xtask, in release mode, into gpu-bin/
# (ignored by git). Then, on the GPU machine, from the repository root:
#   scripts/gpu_run.sh          (writes its results under $OUT, or gpu-out/)
# The `device` tool carries gpu-bin/ there: run with carry ["gpu-bin"].
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-bin
cargo build --release -p xtask
cp target/release/xtask gpu-bin/xtask
# The test and bench binaries: cargo names them with a hash; ask it which.
exe_of() {
    cargo "$@" --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])' | tail -1
}
cp "$(exe_of test --release -p ddpm-rs --test gpu --no-run)" gpu-bin/gpu-tests
cp "$(exe_of bench --bench conv2d --no-run)" gpu-bin/conv2d-bench
cp "$(exe_of bench --bench device --no-run)" gpu-bin/device-bench
ls -la gpu-bin
