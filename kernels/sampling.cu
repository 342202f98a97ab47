// sampling.cu: counter-based noise (Philox4x32-10) and the fused update of
// one sampling step, DDPM or DDIM, with classifier-free guidance.
//
// Noise. Element i of the draw number `offset` of the stream `seed` is
//   philox4x32_10(counter = (i lo, i hi, offset lo, offset hi), key = (seed lo, seed hi))
// turned into one N(0, 1) number by Box-Muller on its first two words. The CPU
// computes the same function (crates/tensor/src/philox.rs), so a seed gives
// the same noise, and the same samples, on both devices.
//
// Update (crates/ddpm/src/sampler.rs has the derivation in the lecture's notation):
//   guidance   e   = (1 + w) e(x, t, y) - w e(x, t, null)     (eps holds both halves)
//   DDPM       x'  = (x - eps_coef e) / sqrt_a + sigma z
//   DDIM       x0  = (x - sqrt(1 - ab) e) / sqrt(ab),  x' = sqrt(ab_prev) x0 + dir e + sigma z   (in f64)

static __device__ __forceinline__ uint4 philox4x32_10(uint4 ctr, uint2 key) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key.x += W0;
            key.y += W1;
        }
        unsigned int hi0 = __umulhi(M0, ctr.x), lo0 = M0 * ctr.x;
        unsigned int hi1 = __umulhi(M1, ctr.z), lo1 = M1 * ctr.z;
        ctr = make_uint4(hi1 ^ ctr.y ^ key.x, lo1, hi0 ^ ctr.w ^ key.y, lo0);
    }
    return ctr;
}

// N(0, 1) from two 24-bit uniforms: u1 in (0, 1] (so the log is finite), u2 in [0, 1).
static __device__ __forceinline__ float philox_normal(unsigned long long seed, unsigned long long offset,
                                                      unsigned long long i) {
    uint4 r = philox4x32_10(make_uint4((unsigned int)i, (unsigned int)(i >> 32), (unsigned int)offset,
                                       (unsigned int)(offset >> 32)),
                            make_uint2((unsigned int)seed, (unsigned int)(seed >> 32)));
    float u1 = ((r.x >> 8) + 1) * (1.0f / 16777216.0f);
    float u2 = (r.y >> 8) * (1.0f / 16777216.0f);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

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

extern "C" __global__ void ddpm_step_f32(float* x, const float* eps, unsigned long long n, int guided,
                                         float guidance, float eps_coef, float sqrt_a, float sigma,
                                         unsigned long long seed, unsigned long long offset) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float e = guided_eps(eps, i, n, guided, guidance);
    float z = sigma != 0.0f ? philox_normal(seed, offset, i) : 0.0f;
    x[i] = (x[i] - eps_coef * e) / sqrt_a + sigma * z;
}

extern "C" __global__ void ddim_step_f32(float* x, const float* eps, unsigned long long n, int guided,
                                         float guidance, double ab, double ab_prev, double sigma, double dir,
                                         unsigned long long seed, unsigned long long offset) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double e = guided_eps(eps, i, n, guided, guidance);
    double z = sigma != 0.0 ? philox_normal(seed, offset, i) : 0.0;
    double x0 = (x[i] - sqrt(1.0 - ab) * e) / sqrt(ab);
    x[i] = (float)(sqrt(ab_prev) * x0 + dir * e + sigma * z);
}
