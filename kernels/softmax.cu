// softmax.cu: softmax over each row of a [rows, cols] matrix (attention's
// weights), one block of 256 threads per row (launch::per_row(rows)).
// block_sum comes from reduce.cuh, compiled in front of this file.

static __device__ __forceinline__ float block_max(float v) {
    __shared__ float buf[BLOCK];
    __syncthreads();
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) buf[threadIdx.x] = fmaxf(buf[threadIdx.x], buf[threadIdx.x + half]);
        __syncthreads();
    }
    return buf[0];
}

// x = exp(x - max) / sum exp(x - max), row by row, in place.
extern "C" __global__ void __launch_bounds__(256) softmax_rows_f32(float* x, int cols) {
    float* xr = x + (long long)blockIdx.x * cols;
    float m = -3.402823466e38f;  // the lowest float: no header defines INFINITY under NVRTC
    for (int j = threadIdx.x; j < cols; j += BLOCK) m = fmaxf(m, xr[j]);
    m = block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += BLOCK) s += expf(xr[j] - m);
    const float inv = 1.0f / block_sum(s);
    for (int j = threadIdx.x; j < cols; j += BLOCK) xr[j] = expf(xr[j] - m) * inv;
}

// The gradient of softmax_rows_f32, in place on g: given y = softmax(x) and
// g = dL/dy, dL/dx = y (g - sum_j g_j y_j), row by row.
extern "C" __global__ void __launch_bounds__(256) softmax_bwd_rows_f32(const float* __restrict__ y, float* g,
                                                                       int cols) {
    const float* yr = y + (long long)blockIdx.x * cols;
    float* gr = g + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int j = threadIdx.x; j < cols; j += BLOCK) s += gr[j] * yr[j];
    s = block_sum(s);
    for (int j = threadIdx.x; j < cols; j += BLOCK) gr[j] = yr[j] * (gr[j] - s);
}
