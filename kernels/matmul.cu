// matmul.cu: batched matrix products for the linear layers and attention,
//   C[b] = alpha op(A[b]) op(B[b]) + bias    (M x N, reduction L),
// with op(X) = X or X^T as the flags say, bias (may be null) added to each
// row (a linear layer's), and batch strides given explicitly: 0 for an
// operand shared by every batch item (a weight), more than the matrix for
// one read out of a larger tensor (q, k, v inside qkv). blockIdx.z is the
// batch item.
// The tiled GEMM is gemm.cuh's, compiled in front of this file; launch as
// launch::tiled_gemm(M, N, batch).

struct MatA {
    const float* a; int m, l, transposed; long long stride;
    __device__ float operator()(int i, int k) const {
        const float* p = a + blockIdx.z * stride;
        return transposed ? p[(long long)k * m + i] : p[(long long)i * l + k];
    }
};
struct MatB {
    const float* b; int l, n, transposed; long long stride;
    __device__ float operator()(int k, int j) const {
        const float* p = b + blockIdx.z * stride;
        return transposed ? p[(long long)j * l + k] : p[(long long)k * n + j];
    }
};
struct MatStore {
    float* c; const float* bias; int n; long long stride; float alpha; int accumulate;
    __device__ void operator()(int i, int j, float v) const {
        float* p = c + blockIdx.z * stride + (long long)i * n + j;
        float out = alpha * v + (bias ? bias[j] : 0.0f);
        *p = accumulate ? *p + out : out;
    }
};

// accumulate != 0 adds the product to C instead of overwriting it.
extern "C" __global__ void __launch_bounds__(256) matmul_f32(
    const float* __restrict__ a, const float* __restrict__ b, float* c, const float* __restrict__ bias, int m,
    int n, int l, int transpose_a, int transpose_b, long long stride_a, long long stride_b, long long stride_c,
    float alpha, int accumulate) {
    MatA ma = {a, m, l, transpose_a, stride_a};
    MatB mb = {b, l, n, transpose_b, stride_b};
    MatStore st = {c, bias, n, stride_c, alpha, accumulate};
    tiled_gemm(m, n, l, ma, mb, st);
}
