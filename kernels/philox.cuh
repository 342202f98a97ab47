// philox.cuh: counter-based random numbers, Philox4x32-10 (Salmon et al.,
// SC 2011), for sampling.cu's noise and elementwise.cu's dropout masks.
// Element i of draw `offset` of stream `seed` is
//   philox4x32_10(counter = (i lo, i hi, offset lo, offset hi), key = (seed lo, seed hi)),
// the same function as crates/tensor/src/philox.rs on the CPU (normals use
// its first two words; uniforms, all four, below).

#pragma once

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

static __device__ __forceinline__ uint4 philox_words(unsigned long long seed, unsigned long long offset,
                                                    unsigned long long i) {
    return philox4x32_10(make_uint4((unsigned int)i, (unsigned int)(i >> 32), (unsigned int)offset,
                                    (unsigned int)(offset >> 32)),
                         make_uint2((unsigned int)seed, (unsigned int)(seed >> 32)));
}

// Uniform i in [0, 1) (24 bits). Uniforms come in blocks of 64 from 16
// counters, all four words of each, so that the CPU makes 64 at once from 16
// counters in vector lanes: uniform i is word (i mod 64) / 16 of counter
// 16 (i / 64) + i mod 16.
static __device__ __forceinline__ float philox_uniform(unsigned long long seed, unsigned long long offset,
                                                       unsigned long long i) {
    unsigned long long r = i & 63;
    uint4 w = philox_words(seed, offset, (i >> 6) * 16 + (r & 15));
    unsigned int word = r < 16 ? w.x : r < 32 ? w.y : r < 48 ? w.z : w.w;
    return (word >> 8) * (1.0f / 16777216.0f);
}

// N(0, 1) from two 24-bit uniforms: u1 in (0, 1] (so the log is finite), u2 in [0, 1).
static __device__ __forceinline__ float philox_normal(unsigned long long seed, unsigned long long offset,
                                                      unsigned long long i) {
    uint4 r = philox_words(seed, offset, i);
    float u1 = ((r.x >> 8) + 1) * (1.0f / 16777216.0f);
    float u2 = (r.y >> 8) * (1.0f / 16777216.0f);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

