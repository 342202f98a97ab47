// softmax.cu: softmax and log-softmax over each row of a [rows, cols]
// matrix (attention's weights; a classifier's log-probabilities), and their
// gradients; out of place. One block of 256 threads per row
// (launch::per_row(rows)). block_reduce and block_sum come from reduce.cuh.
// The formulas are ops/softmax.rs's:
//   softmax      y_i = exp(x_i - m) / sum_j exp(x_j - m),  m = max_j x_j
//   log-softmax  y_i = x_i - m - log sum_j exp(x_j - m)
//   gradients    softmax: dx = y (g - sum_j g_j y_j);  log-softmax: dx = g - exp(y) sum_j g_j

#include "reduce.cuh"

struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// The largest value of a row of `cols`, to every thread of the block.
static __device__ __forceinline__ float row_max(const float* xr, int cols) {
    float m = -3.402823466e38f;  // the lowest float: no header defines INFINITY under NVRTC
    for (int j = threadIdx.x; j < cols; j += BLOCK) m = fmaxf(m, xr[j]);
    return block_reduce(m, Max());
}

// sum_j exp(x_j - m) over a row, to every thread of the block.
static __device__ __forceinline__ float row_sum_exp(const float* xr, int cols, float m) {
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += BLOCK) s += expf(xr[j] - m);
    return block_sum(s);
}

extern "C" __global__ void __launch_bounds__(256) softmax_f32(const float* __restrict__ x, float* __restrict__ y,
                                                              int cols) {
    const float* xr = x + (long long)blockIdx.x * cols;
    float* yr = y + (long long)blockIdx.x * cols;
    const float m = row_max(xr, cols);
    const float inv = 1.0f / row_sum_exp(xr, cols, m);
    for (int j = threadIdx.x; j < cols; j += BLOCK) yr[j] = expf(xr[j] - m) * inv;
}

extern "C" __global__ void __launch_bounds__(256) log_softmax_f32(const float* __restrict__ x,
                                                                  float* __restrict__ y, int cols) {
    const float* xr = x + (long long)blockIdx.x * cols;
    float* yr = y + (long long)blockIdx.x * cols;
    const float m = row_max(xr, cols);
    const float lse = m + logf(row_sum_exp(xr, cols, m));
    for (int j = threadIdx.x; j < cols; j += BLOCK) yr[j] = xr[j] - lse;
}

// dx = y (g - sum_j g_j y_j), from y = softmax(x) and g = dL/dy.
extern "C" __global__ void __launch_bounds__(256) softmax_bwd_f32(const float* __restrict__ y,
                                                                  const float* __restrict__ g,
                                                                  float* __restrict__ dx, int cols) {
    const long long row = (long long)blockIdx.x * cols;
    const float *yr = y + row, *gr = g + row;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += BLOCK) s += gr[j] * yr[j];
    s = block_sum(s);
    for (int j = threadIdx.x; j < cols; j += BLOCK) dx[row + j] = yr[j] * (gr[j] - s);
}

// dx = g - exp(y) sum_j g_j, from y = log_softmax(x) and g = dL/dy.
extern "C" __global__ void __launch_bounds__(256) log_softmax_bwd_f32(const float* __restrict__ y,
                                                                      const float* __restrict__ g,
                                                                      float* __restrict__ dx, int cols) {
    const long long row = (long long)blockIdx.x * cols;
    const float *yr = y + row, *gr = g + row;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += BLOCK) s += gr[j];
    s = block_sum(s);
    for (int j = threadIdx.x; j < cols; j += BLOCK) dx[row + j] = gr[j] - expf(yr[j]) * s;
}
