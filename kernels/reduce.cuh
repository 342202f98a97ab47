// reduce.cuh: the block-wide sums that norm.cu, softmax.cu and reduce.cu
// build on. Compiled in front of the files that list it as a prelude
// (crates/cuda/src/source.rs).

#define BLOCK 256

// The sum of v over the block's 256 threads, returned to every thread. Every
// thread of the block must call it (it synchronises). The tree adds in a
// fixed order, so the result does not depend on timing.
static __device__ __forceinline__ float block_sum(float v) {
    __shared__ float buf[BLOCK];
    __syncthreads();  // the previous call's readers of buf[0] are done
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
        __syncthreads();
    }
    return buf[0];
}

// block_sum in double, for the sums the tensor crate accumulates in f64.
static __device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double buf[BLOCK];
    __syncthreads();
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
        __syncthreads();
    }
    return buf[0];
}
