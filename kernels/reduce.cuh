// reduce.cuh: the block-wide sums that norm.cu, softmax.cu and reduce.cu
// build on (each includes it; crates/cuda/src/source.rs hands it to NVRTC).

#pragma once

#define BLOCK 256

// v combined over the block's 256 threads by `op` (a sum, a maximum),
// returned to every thread. Every thread of the block must call it (it
// synchronises). The tree combines in a fixed order, so the result does not
// depend on timing.
template <class T, class Op>
static __device__ __forceinline__ T block_reduce(T v, Op op) {
    __shared__ T buf[BLOCK];
    __syncthreads();  // the previous call's readers of buf[0] are done
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) buf[threadIdx.x] = op(buf[threadIdx.x], buf[threadIdx.x + half]);
        __syncthreads();
    }
    return buf[0];
}

struct Plus {
    template <class T>
    __device__ T operator()(T a, T b) const { return a + b; }
};

// The sum of v over the block.
static __device__ __forceinline__ float block_sum(float v) { return block_reduce(v, Plus()); }

// block_sum in double, for the sums the tensor crate accumulates in f64.
static __device__ __forceinline__ double block_sum_f64(double v) { return block_reduce(v, Plus()); }
