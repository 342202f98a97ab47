// cuda_emu.h: compiles the project's kernels/*.cu as plain C++ for the CPU, so
// that their logic is tested on machines without a GPU (CI has none).
//
// It stands in for what nvcc gives every .cu implicitly (cuda_runtime.h and
// the device built-ins): crates/kernel-emu/build.rs includes it, then the
// .cu, whose own #include lines bring the shared headers (gemm.cuh and the
// like), so the files need nothing emulation-specific.
//
// The model is the one nvcc's old device emulation used:
// - a launch runs its blocks one after another; the threads of a block are
//   fibers on one OS thread, and __syncthreads switches to the next fiber,
//   so that every thread reaches the barrier before any goes past it;
// - `__shared__` variables become function statics: one copy, which is
//   per-block memory because only one block runs at a time (and only one
//   launch at a time: emu_launch holds a global lock);
// - threadIdx, blockIdx, blockDim, gridDim are thread-local variables;
// - atomicAdd is a compare-and-swap loop; there are no warp shuffles, because
//   the kernels do not use them.
//
// It is a test harness, not a second backend: it is slow (every thread of
// the grid in turn on one core) and only for the small shapes of the tests. The kernels
// must follow CUDA's rules for it to mean anything: no __syncthreads in a
// branch that not every thread of the block takes, no dynamic shared memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct dim3 {
    unsigned int x, y, z;
};
struct uint2 {
    unsigned int x, y;
};
struct uint3 {
    unsigned int x, y, z;
};
struct uint4 {
    unsigned int x, y, z, w;
};

namespace emu {
extern thread_local uint3 thread_idx;
extern thread_local uint3 block_idx;
extern thread_local dim3 block_dim;
extern thread_local dim3 grid_dim;
void sync_threads();
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __shared__ static

static inline void __syncthreads() { emu::sync_threads(); }

// The CUDA built-ins the kernels use, with the same meaning on the CPU.
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
// A double's high and low 32-bit words, and a double from them.
static inline int __double2hiint(double d) {
    unsigned long long bits;
    std::memcpy(&bits, &d, sizeof bits);
    return (int)(unsigned int)(bits >> 32);
}
static inline int __double2loint(double d) {
    unsigned long long bits;
    std::memcpy(&bits, &d, sizeof bits);
    return (int)(unsigned int)bits;
}
static inline double __hiloint2double(int hi, int lo) {
    unsigned long long bits = ((unsigned long long)(unsigned int)hi << 32) | (unsigned int)lo;
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}
static inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
static inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
    return uint4{x, y, z, w};
}
static inline float atomicAdd(float* address, float value) {
    unsigned int* bits = reinterpret_cast<unsigned int*>(address);
    unsigned int old = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        float current;
        std::memcpy(&current, &old, sizeof current);
        float updated = current + value;
        unsigned int want;
        std::memcpy(&want, &updated, sizeof want);
        if (__atomic_compare_exchange_n(bits, &old, want, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
            return current;
        }
    }
}
// Runs `body(ctx)` once per thread of the grid, blocks one after another.
// The Rust side (crates/kernel-emu) passes a closure that calls one kernel.
extern "C" void emu_launch(dim3 grid, dim3 block, void (*body)(void*), void* ctx);
