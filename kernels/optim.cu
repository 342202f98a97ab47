// optim.cu: the optimiser's elementwise updates (ops/optim.rs has the same
// formulas on the CPU): Adam, and the linear interpolation of the weights'
// moving average. One thread per element (launch::elementwise(n)). The
// gradient norm is reduce.cu's; clipping is a broadcasting multiply.

// One Adam step on a parameter p with gradient g:
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
//   p_out = p - step_size m / (sqrt(v) / bc2_sqrt + eps)
// with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t) from the
// host. m and v are updated in place; the new weights go to p_out.
extern "C" __global__ void adam_f32(const float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                    float* __restrict__ v, float* __restrict__ p_out, long long n, float step_size,
                                    float b1, float b2, float bc2_sqrt, float eps) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gi = g[i];
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    p_out[i] = p[i] - step_size * (mi / denom);
}

// x += w (end - x), in place: the EMA's shadow <- d shadow + (1 - d) theta
// with w = 1 - d (a shadow equal to theta stays exactly equal).
extern "C" __global__ void lerp_f32(float* __restrict__ x, const float* __restrict__ end, long long n, float w) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += w * (end[i] - x[i]);
}
