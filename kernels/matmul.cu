// matmul.cu: batched matrix products (ddpm_tensor::backend::MatmulShape),
//   C[b] = op(A[b]) op(B[b])    (M x N, reduction K),
// with op(X) = X or X^T as the flags say, A[b] at b * stride_a and B[b] at
// b * stride_b (0 for a weight shared by every batch item), C's batches
// contiguous. blockIdx.z is the batch item.
// The tiled GEMM is gemm.cuh's (included below); launch as
// launch::tiled_gemm(M, N, batch).

#include "gemm.cuh"

struct MatA {
    const float* a; int m, k, transposed; long long stride;
    __device__ float operator()(int i, int l) const {
        const float* p = a + blockIdx.z * stride;
        return transposed ? p[(long long)l * m + i] : p[(long long)i * k + l];
    }
};
struct MatB {
    const float* b; int k, n, transposed; long long stride;
    __device__ float operator()(int l, int j) const {
        const float* p = b + blockIdx.z * stride;
        return transposed ? p[(long long)j * k + l] : p[(long long)l * n + j];
    }
};
struct MatStore {
    float* c; int m, n;
    __device__ void operator()(int i, int j, float v) const { c[((long long)blockIdx.z * m + i) * n + j] = v; }
};

// A is M x K (K x M when transpose_a), B is K x N (N x K when transpose_b).
extern "C" __global__ void __launch_bounds__(256) matmul_f32(const float* __restrict__ a, const float* __restrict__ b,
                                                             float* __restrict__ c, int m, int n, int k,
                                                             int transpose_a, int transpose_b, long long stride_a,
                                                             long long stride_b) {
    MatA ma = {a, m, k, transpose_a, stride_a};
    MatB mb = {b, k, n, transpose_b, stride_b};
    MatStore st = {c, m, n};
    tiled_gemm(m, n, k, ma, mb, st);
}
