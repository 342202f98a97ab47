// optim.cu: the optimiser's side of a training step, all on the device:
// the gradient norm and its clipping factor, Adam, and the EMA of the
// weights (crates/nn/src/optim.rs has the same formulas on the CPU).

// From the per-parameter sums of squares: out[0] = the global norm,
// out[1] = the factor to scale every gradient by (min(1, max_norm / (norm +
// 1e-6)), as torch.nn.utils.clip_grad_norm_). One thread; count is small.
extern "C" __global__ void clip_coef_f32(const float* __restrict__ sumsq, int count, float max_norm,
                                         float* __restrict__ out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < count; ++i) s += sumsq[i];
    float norm = (float)sqrt(s);
    float coef = max_norm / (norm + 1e-6f);
    out[0] = norm;
    out[1] = (coef < 1.0f || coef != coef) ? coef : 1.0f;
}

// out[index] = sum of x^2 over n (one block): a parameter's share of the
// norm. block_sum comes from reduce.cuh.
extern "C" __global__ void __launch_bounds__(256) sumsq_f32(const float* __restrict__ x, long long n,
                                                            float* __restrict__ out, int index) {
    float s = 0.0f;
    for (long long i = threadIdx.x; i < n; i += BLOCK) s += x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) out[index] = s;
}

// One Adam step on a parameter, with its gradient scaled by clip[1] first:
//   m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,
//   p -= step_size m / (sqrt(v) / bc2_sqrt + eps)
// with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t) from the host.
extern "C" __global__ void adam_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                    float* __restrict__ v, long long n, const float* __restrict__ clip,
                                    float step_size, float b1, float b2, float bc2_sqrt, float eps) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i] * clip[1];
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * (gi * gi);
    float denom = sqrtf(v[i]) / bc2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);
}

// shadow += (1 - d) (p - shadow): the EMA update, `one_minus_d` = 1 - d.
extern "C" __global__ void ema_f32(float* __restrict__ shadow, const float* __restrict__ p, long long n,
                                   float one_minus_d) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) shadow[i] += one_minus_d * (p[i] - shadow[i]);
}
