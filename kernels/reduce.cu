// reduce.cu: sums over axes, and the global norm of many buffers, both
// accumulated in double in a fixed order, so that a result is the same from
// run to run (no atomics). block_sum_f64 comes from reduce.cuh.

#include "reduce.cuh"

// The offset sum_k i_k s_k of index q unravelled over e0 x e1 x e2 x e3 (e3
// fastest; e0 is whatever q / (e1 e2 e3) leaves), in T: 32-bit when the index space fits, since
// integer division is much cheaper there.
template <class T>
static __device__ __forceinline__ long long offset4(T q, T e1, T e2, T e3, long long s0, long long s1, long long s2,
                                                    long long s3) {
    T i3 = q % e3, r = q / e3;
    T i2 = r % e2;
    r /= e2;
    T i1 = r % e1, i0 = r / e1;
    return i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3;
}

// out[o] = sum of x over the reduced index space from the base offset of o
// (ddpm_tensor::backend::Reduction, padded to 4 kept and 4 reduced (extent,
// stride) pairs with extents of 1): output o unravels over k0 x k1 x k2 x k3
// with strides ks (k0, the outermost, is the grid's extent), the reduced
// index over r0 x r1 x r2 x r3 with strides rs. One block per output
// (launch::per_row(outputs)); thread t adds the terms t, t + 256, ... in
// double, then the block's tree adds the 256 partial sums.
extern "C" __global__ void __launch_bounds__(256) sum_f32(
    const float* __restrict__ x, float* __restrict__ out, long long k1, long long k2, long long k3, long long ks0,
    long long ks1, long long ks2, long long ks3, long long r0, long long r1, long long r2, long long r3,
    long long rs0, long long rs1, long long rs2, long long rs3) {
    const long long base = offset4<long long>(blockIdx.x, k1, k2, k3, ks0, ks1, ks2, ks3);
    const long long terms = r0 * r1 * r2 * r3;
    double s = 0.0;
    if (terms <= 2147483647LL) {
        for (unsigned int q = threadIdx.x; q < (unsigned int)terms; q += BLOCK)
            s += x[base + offset4<unsigned int>(q, r1, r2, r3, rs0, rs1, rs2, rs3)];
    } else {
        for (long long q = threadIdx.x; q < terms; q += BLOCK)
            s += x[base + offset4<long long>(q, r1, r2, r3, rs0, rs1, rs2, rs3)];
    }
    s = block_sum_f64(s);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)s;
}

// ---- the global norm: sqrt(sum over every buffer of x^2), in double ----
// Each buffer's blocks write their partial sums (launch::sum_of_squares(n),
// SUMSQ_CHUNK = 4096 elements per block), then global_norm_f32 adds every
// partial in a fixed order. A partial is a double kept as its two 32-bit
// words (low, high) in two slots of a float buffer, so nothing is rounded
// between the kernels and every buffer of the executors stays f32.

#define SUMSQ_CHUNK 4096

// partial[first + b] = sum of x[i]^2 over the chunk b of x [n].
extern "C" __global__ void __launch_bounds__(256) sumsq_partial_f32(const float* __restrict__ x, long long n,
                                                                    unsigned int* __restrict__ partial,
                                                                    int first) {
    const long long start = (long long)blockIdx.x * SUMSQ_CHUNK;
    double s = 0.0;
    for (int k = threadIdx.x; k < SUMSQ_CHUNK; k += BLOCK) {
        long long i = start + k;
        if (i < n) s += (double)x[i] * (double)x[i];
    }
    s = block_sum_f64(s);
    if (threadIdx.x == 0) {
        const long long slot = 2 * ((long long)first + blockIdx.x);
        partial[slot] = (unsigned int)__double2loint(s);
        partial[slot + 1] = (unsigned int)__double2hiint(s);
    }
}

// out[0] = sqrt(sum of the `count` partials), as a float. One block
// (launch::per_row(1)).
extern "C" __global__ void __launch_bounds__(256) global_norm_f32(const unsigned int* __restrict__ partial,
                                                                  int count, float* __restrict__ out) {
    double s = 0.0;
    for (int j = threadIdx.x; j < count; j += BLOCK)
        s += __hiloint2double((int)partial[2 * j + 1], (int)partial[2 * j]);
    s = block_sum_f64(s);
    if (threadIdx.x == 0) out[0] = (float)sqrt(s);
}
