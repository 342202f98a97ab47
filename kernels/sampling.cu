// sampling.cu: counter-based noise (Philox4x32-10) and the fused update of
// one sampling step, DDPM or DDIM, with classifier-free guidance.
//
// Noise comes from philox.cuh: the CPU
// computes the same function (crates/tensor/src/philox.rs), so a seed gives
// the same noise, and the same samples, on both devices.
//
// Update (crates/tensor/src/ops/sampling.rs; crates/ddpm/src/sampler.rs has
// the derivation in the lecture's notation), out of place, z only when sigma != 0:
//   guidance   e   = (1 + w) e(x, t, y) - w e(x, t, null)     (eps holds both halves)
//   DDPM       x'  = (x - eps_coef e) / sqrt_a + sigma z
//   DDIM       x0  = (x - sqrt(1 - ab) e) / sqrt(ab),  x' = sqrt(ab_prev) x0 + dir e + sigma z   (in f64)

#include "philox.cuh"

// The raw Philox words, four per counter: for the known-answer test.
extern "C" __global__ void philox4x32_10_u32(unsigned int* out, const unsigned int* ctr_key, int count) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const unsigned int* in = ctr_key + 6 * i;
    uint4 r = philox4x32_10(make_uint4(in[0], in[1], in[2], in[3]), make_uint2(in[4], in[5]));
    out[4 * i + 0] = r.x;
    out[4 * i + 1] = r.y;
    out[4 * i + 2] = r.z;
    out[4 * i + 3] = r.w;
}

// out[i] = N(0, 1) number i of draw `offset` of stream `seed`, for i < n.
extern "C" __global__ void randn_f32(float* out, unsigned long long n, unsigned long long seed,
                                     unsigned long long offset) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = philox_normal(seed, offset, i);
}

// The guided noise estimate of element i: eps has n values, or 2n when
// guided (the conditional half first, as sampler::predict_noise stacks them).
static __device__ __forceinline__ float guided_eps(const float* eps, unsigned long long i, unsigned long long n,
                                                   int guided, float w) {
    return guided ? (1.0f + w) * eps[i] - w * eps[i + n] : eps[i];
}

// out[i] = x'[i] of one DDPM step from x and the noise estimate eps (n
// values, or 2n when guided); one thread per element.
extern "C" __global__ void ddpm_step_f32(const float* __restrict__ x, const float* __restrict__ eps,
                                         float* __restrict__ out, unsigned long long n, int guided, float guidance,
                                         float eps_coef, float sqrt_a, float sigma, unsigned long long seed,
                                         unsigned long long offset) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float e = guided_eps(eps, i, n, guided, guidance);
    float z = sigma != 0.0f ? philox_normal(seed, offset, i) : 0.0f;
    out[i] = (x[i] - eps_coef * e) / sqrt_a + sigma * z;
}

// The same for one DDIM step, in double.
extern "C" __global__ void ddim_step_f32(const float* __restrict__ x, const float* __restrict__ eps,
                                         float* __restrict__ out, unsigned long long n, int guided, float guidance,
                                         double ab, double ab_prev, double sigma, double dir,
                                         unsigned long long seed, unsigned long long offset) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double e = guided_eps(eps, i, n, guided, guidance);
    double z = sigma != 0.0 ? philox_normal(seed, offset, i) : 0.0;
    double x0 = (x[i] - sqrt(1.0 - ab) * e) / sqrt(ab);
    out[i] = (float)(sqrt(ab_prev) * x0 + dir * e + sigma * z);
}
