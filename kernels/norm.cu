// norm.cu: group normalisation of x [N, C, HW], optionally followed by SiLU
// (the U-Net's "norm, then activation", fused as on the CPU; see
// crates/tensor/src/ops/group_norm.rs for the formulas). One block of 256
// threads per (sample, group): launch::per_row(N * G). block_sum comes from
// reduce.cuh.

#include "reduce.cuh"

static __device__ __forceinline__ float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

// y = act(gamma_c (x - mu) rstd + beta_c); keeps mean and rstd per (n, g).
extern "C" __global__ void __launch_bounds__(256) group_norm_fwd_f32(
    const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
    float* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, int c, int hw, int groups,
    float eps, int silu) {
    const int ng = blockIdx.x, cg = c / groups, m = cg * hw;
    const int c0 = (ng % groups) * cg;
    const float* xb = x + (long long)ng * m;
    float* yb = y + (long long)ng * m;

    float s = 0.0f;
    for (int i = threadIdx.x; i < m; i += BLOCK) s += xb[i];
    const float mu = block_sum(s) / m;
    float q = 0.0f;
    for (int i = threadIdx.x; i < m; i += BLOCK) q += (xb[i] - mu) * (xb[i] - mu);
    const float r = rsqrtf(block_sum(q) / m + eps);

    for (int i = threadIdx.x; i < m; i += BLOCK) {
        int ch = c0 + i / hw;
        float z = gamma[ch] * (xb[i] - mu) * r + beta[ch];
        yb[i] = silu ? z * sigmoidf(z) : z;
    }
    if (threadIdx.x == 0) {
        mean[ng] = mu;
        rstd[ng] = r;
    }
}

// dz = dL/dz from dL/dy, where y = act(z).
static __device__ __forceinline__ float act_grad(float z, float g, int silu) {
    if (!silu) return g;
    float sg = sigmoidf(z);
    return g * sg * (1.0f + z * (1.0f - sg));
}

// dx for each (n, g), and this sample's share of d_gamma and d_beta:
// dgamma_part and dbeta_part are [N, C]; reduce.cu's sum_f32 adds them over N.
extern "C" __global__ void __launch_bounds__(256) group_norm_bwd_f32(
    const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
    const float* __restrict__ dy, const float* __restrict__ mean, const float* __restrict__ rstd,
    float* __restrict__ dx, float* __restrict__ dgamma_part, float* __restrict__ dbeta_part, int c, int hw,
    int groups, int silu) {
    const int ng = blockIdx.x, cg = c / groups, m = cg * hw;
    const int n = ng / groups, c0 = (ng % groups) * cg;
    const float mu = mean[ng], r = rstd[ng];
    const float* xb = x + (long long)ng * m;
    const float* gb = dy + (long long)ng * m;

    // Per channel: sum dz and sum dz xhat; over the group: the same weighted by gamma.
    float sum_d = 0.0f, sum_dx = 0.0f;
    for (int j = 0; j < cg; ++j) {
        const int ch = c0 + j;
        float s_g = 0.0f, s_gx = 0.0f;
        for (int i = threadIdx.x; i < hw; i += BLOCK) {
            float xhat = (xb[j * hw + i] - mu) * r;
            float dz = act_grad(gamma[ch] * xhat + beta[ch], gb[j * hw + i], silu);
            s_g += dz;
            s_gx += dz * xhat;
        }
        s_g = block_sum(s_g);
        s_gx = block_sum(s_gx);
        if (threadIdx.x == 0) {
            dbeta_part[n * c + ch] = s_g;
            dgamma_part[n * c + ch] = s_gx;
        }
        sum_d += s_g * gamma[ch];
        sum_dx += s_gx * gamma[ch];
    }
    const float mean_d = sum_d / m, mean_dx = sum_dx / m;
    for (int i = threadIdx.x; i < m; i += BLOCK) {
        const int ch = c0 + i / hw;
        float xhat = (xb[i] - mu) * r;
        float dz = act_grad(gamma[ch] * xhat + beta[ch], gb[i], silu);
        dx[(long long)ng * m + i] = r * (dz * gamma[ch] - mean_d - xhat * mean_dx);
    }
}
