// elementwise.cu: the tensor crate's elementwise maps and data movement, one
// thread per output element (launch::elementwise(n)) unless said otherwise.
// The formulas are those of the CPU arms in crates/tensor/src/ops/*.rs.

#include "philox.cuh"

static __device__ __forceinline__ long long global_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

static __device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// out[i] = value for i < n.
extern "C" __global__ void fill_f32(float* __restrict__ out, long long n, float value) {
    long long i = global_index();
    if (i < n) out[i] = value;
}

// ---- y = f(x): every ddpm_tensor::ops::UnaryOp, by its code ----
// The codes are the order of the enum (crates/cuda/src/ops/elementwise.rs
// maps them); a and b are the op's parameters (p of powf, scale and shift of
// affine, the scale of scale, low and high of clamp), unused otherwise.

#define UNARY_NEG 0
#define UNARY_EXP 1
#define UNARY_LOG 2
#define UNARY_SQRT 3
#define UNARY_SQUARE 4
#define UNARY_POWF 5
#define UNARY_TANH 6
#define UNARY_SIGMOID 7
#define UNARY_SILU 8
#define UNARY_RELU 9
#define UNARY_SIN 10
#define UNARY_COS 11
#define UNARY_AFFINE 12
#define UNARY_SCALE 13
#define UNARY_CLAMP 14

static __device__ __forceinline__ float unary(int op, float x, float a, float b) {
    switch (op) {
        case UNARY_NEG: return -x;
        case UNARY_EXP: return expf(x);
        case UNARY_LOG: return logf(x);
        case UNARY_SQRT: return sqrtf(x);
        case UNARY_SQUARE: return x * x;
        case UNARY_POWF: return powf(x, a);
        case UNARY_TANH: return tanhf(x);
        case UNARY_SIGMOID: return sigmoid(x);
        case UNARY_SILU: return x * sigmoid(x);        // x s(x)
        case UNARY_RELU: return fmaxf(x, 0.0f);        // max(x, 0), 0 for a NaN as f32::max
        case UNARY_SIN: return sinf(x);
        case UNARY_COS: return cosf(x);
        case UNARY_AFFINE: return a * x + b;           // scale x + shift
        case UNARY_SCALE: return a * x;
        default: {                                     // UNARY_CLAMP, the last code: as f32::clamp, a NaN stays NaN
            float y = x;
            if (y < a) y = a;
            if (y > b) y = b;
            return y;
        }
    }
}

// y[i] = f(x[i]) for i < n.
extern "C" __global__ void unary_f32(const float* __restrict__ x, float* __restrict__ y, long long n, int op, float a,
                                     float b) {
    long long i = global_index();
    if (i < n) y[i] = unary(op, x[i], a, b);
}

// ---- d_x = g f'(saved): every ddpm_tensor::ops::UnaryBackward, by its code ----
// saved is x or y as the rule says; p is powf's exponent.

#define BWD_SQRT 0     // y = sqrt x:     g / (2 y)                 (saved y)
#define BWD_POWF 1     // y = x^p:        g p x^(p - 1)             (saved x)
#define BWD_TANH 2     // y = tanh x:     g (1 - y^2)               (saved y)
#define BWD_SIGMOID 3  // y = s(x):       g y (1 - y)               (saved y)
#define BWD_SILU 4     // y = x s(x):     g s (1 + x (1 - s))       (saved x)
#define BWD_RELU 5     // y = max(x, 0):  g where x > 0, else 0     (saved x)

static __device__ __forceinline__ float unary_backward(int op, float g, float v, float p) {
    switch (op) {
        case BWD_SQRT: return g / (2.0f * v);
        case BWD_POWF: return g * p * powf(v, p - 1.0f);
        case BWD_TANH: return g * (1.0f - v * v);
        case BWD_SIGMOID: return g * v * (1.0f - v);
        case BWD_SILU: {
            float s = sigmoid(v);
            return g * s * (1.0f + v * (1.0f - s));
        }
        default: return v > 0.0f ? g : 0.0f;  // BWD_RELU, the last code
    }
}

// d_x[i] = g[i] f'(saved[i]) for i < n.
extern "C" __global__ void unary_bwd_f32(const float* __restrict__ g, const float* __restrict__ saved,
                                         float* __restrict__ d_x, long long n, int op, float p) {
    long long i = global_index();
    if (i < n) d_x[i] = unary_backward(op, g[i], saved[i], p);
}

// ---- out = a (op) b with broadcasting ----
// The output has extents d0 x d1 x d2 x d3 (the tensor crate's merged walk,
// padded with 1s on the left); element (i0, i1, i2, i3) reads a at
// sum_k i_k sa_k and b at sum_k i_k sb_k (stride 0 on a broadcast axis).

#define BINARY_ADD 0
#define BINARY_SUB 1
#define BINARY_MUL 2
#define BINARY_DIV 3
#define BINARY_MAXIMUM 4

static __device__ __forceinline__ float binary(int op, float x, float y) {
    switch (op) {
        case BINARY_ADD: return x + y;
        case BINARY_SUB: return x - y;
        case BINARY_MUL: return x * y;
        case BINARY_DIV: return x / y;
        default: return fmaxf(x, y);  // BINARY_MAXIMUM, the last code: the other operand where one is NaN, as f32::max
    }
}

// The index i of a d0 x d1 x d2 x d3 walk (d3 fastest) as (i0, i1, i2, i3),
// in T: 32-bit when the walk fits (integer division is much cheaper there),
// 64-bit otherwise.
template <class T>
static __device__ __forceinline__ void unravel4(T i, T d1, T d2, T d3, long long* at) {
    T i3 = i % d3, r = i / d3;
    T i2 = r % d2;
    r /= d2;
    at[0] = r / d1;
    at[1] = r % d1;
    at[2] = i2;
    at[3] = i3;
}

// (i0, i1, i2, i3) of output index i < n.
static __device__ __forceinline__ void index4(long long i, long long n, long long d1, long long d2, long long d3,
                                              long long* at) {
    if (n <= 2147483647LL)
        unravel4<unsigned int>((unsigned int)i, (unsigned int)d1, (unsigned int)d2, (unsigned int)d3, at);
    else
        unravel4<long long>(i, d1, d2, d3, at);
}

extern "C" __global__ void binary_f32(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ out, int op, long long d0, long long d1, long long d2,
                                      long long d3, long long sa0, long long sa1, long long sa2, long long sa3,
                                      long long sb0, long long sb1, long long sb2, long long sb3) {
    long long n = d0 * d1 * d2 * d3, i = global_index();
    if (i >= n) return;
    long long k[4];
    index4(i, n, d1, d2, d3, k);
    long long ia = k[0] * sa0 + k[1] * sa1 + k[2] * sa2 + k[3] * sa3;
    long long ib = k[0] * sb0 + k[1] * sb1 + k[2] * sb2 + k[3] * sb3;
    out[i] = binary(op, a[ia], b[ib]);
}

// ---- moving numbers ----

// dst[q * dst_stride + dst_offset + j] = src[q * src_stride + src_offset + j]
// for q < blocks, j < width (ddpm_tensor::backend::BlockCopy): a copy, a
// narrow, one part of a concatenation. The rest of dst is left as it is.
// One thread per copied element: launch::elementwise(blocks * width).
extern "C" __global__ void copy_blocks_f32(const float* __restrict__ src, float* __restrict__ dst, long long blocks,
                                           long long width, long long src_stride, long long src_offset,
                                           long long dst_stride, long long dst_offset) {
    long long i = global_index(), n = blocks * width;
    if (i >= n) return;
    long long q, j;
    if (n <= 2147483647LL) {  // 32-bit division where the copy fits, as in binary_f32
        q = (unsigned int)i / (unsigned int)width;
        j = (unsigned int)i % (unsigned int)width;
    } else {
        q = i / width;
        j = i % width;
    }
    dst[q * dst_stride + dst_offset + j] = src[q * src_stride + src_offset + j];
}

// dst[i] = src[sum_k i_k s_k] for the index i of the d0 x d1 x d2 x d3
// output (ddpm_tensor::backend::Gather, merged and padded to 4 axes): a
// permutation of the axes. Writes are coalesced, reads follow the strides.
extern "C" __global__ void gather_f32(const float* __restrict__ src, float* __restrict__ dst, long long d0,
                                      long long d1, long long d2, long long d3, long long s0, long long s1,
                                      long long s2, long long s3) {
    long long n = d0 * d1 * d2 * d3, i = global_index();
    if (i >= n) return;
    long long k[4];
    index4(i, n, d1, d2, d3, k);
    dst[i] = src[k[0] * s0 + k[1] * s1 + k[2] * s2 + k[3] * s3];
}

// ---- images: [planes, h, w] ----

// Nearest-neighbour x2 upsampling of [planes, h, w] to [planes, 2h, 2w]:
// y[p, i, j] = x[p, i / 2, j / 2]. One thread per output.
extern "C" __global__ void upsample2x_f32(const float* __restrict__ x, float* __restrict__ y, long long planes,
                                          int h, int w) {
    long long i = global_index();
    if (i >= planes * 4 * h * w) return;
    int ox = i % (2 * w);
    long long rest = i / (2 * w);
    int oy = rest % (2 * h);
    long long p = rest / (2 * h);
    y[i] = x[(p * h + oy / 2) * w + ox / 2];
}

// The gradient of upsample2x_f32 for an input [planes, h, w]: each input
// pixel collects its 2 x 2 block of dy. One thread per input pixel.
extern "C" __global__ void upsample2x_bwd_f32(const float* __restrict__ dy, float* __restrict__ dx,
                                              long long planes, int h, int w) {
    long long i = global_index();
    if (i >= planes * h * w) return;
    int x = i % w;
    long long rest = i / w;
    int y = rest % h;
    long long p = rest / h;
    const float* d = dy + p * 4 * h * w;
    dx[i] = d[(2 * y) * 2 * w + 2 * x] + d[(2 * y) * 2 * w + 2 * x + 1] + d[(2 * y + 1) * 2 * w + 2 * x] +
            d[(2 * y + 1) * 2 * w + 2 * x + 1];
}

// 2 x 2 max pooling, stride 2, of x [planes, h, w] (h, w even) to
// y [planes, h/2, w/2]: y[p, i, j] = max over a, b in {0, 1} of
// x[p, 2i + a, 2j + b]. One thread per output.
extern "C" __global__ void max_pool2x2_f32(const float* __restrict__ x, float* __restrict__ y, long long planes,
                                           int h, int w) {
    long long i = global_index();
    const int ho = h / 2, wo = w / 2;
    if (i >= planes * ho * wo) return;
    int j = i % wo;
    long long rest = i / wo;
    int r = rest % ho;
    long long p = rest / ho;
    const float* top = x + (p * h + 2 * r) * w + 2 * j;
    const float* bottom = top + w;
    y[i] = fmaxf(fmaxf(top[0], top[1]), fmaxf(bottom[0], bottom[1]));
}

// The gradient of max_pool2x2_f32: dx at each window's largest element is
// dy of the window, 0 at the other three; on a tie the first of the window
// in row-major order takes it (as ops/max_pool.rs). One thread per input
// element, which finds its window's winner itself.
extern "C" __global__ void max_pool2x2_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                               float* __restrict__ dx, long long planes, int h, int w) {
    long long i = global_index();
    if (i >= planes * h * w) return;
    int col = i % w;
    long long rest = i / w;
    int row = rest % h;
    long long p = rest / h;
    const int r = row / 2, j = col / 2;
    const float* top = x + (p * h + 2 * r) * w + 2 * j;
    const float v[4] = {top[0], top[1], top[w], top[w + 1]};
    int best = 0;
    for (int k = 1; k < 4; ++k)
        if (v[k] > v[best]) best = k;
    const int mine = 2 * (row % 2) + col % 2;
    dx[i] = best == mine ? dy[(p * (h / 2) + r) * (w / 2) + j] : 0.0f;
}

// ---- the class embedding: a table lookup and its gradient ----
// The indices come as floats (exact below 2^24; the Rust side checks), so
// that every buffer of the executors is f32.

// out[i, :] = table[idx[i], :] for i < n rows of `dim`.
extern "C" __global__ void gather_rows_f32(const float* __restrict__ table, const float* __restrict__ idx,
                                           float* __restrict__ out, int n, int dim) {
    long long i = global_index();
    if (i >= (long long)n * dim) return;
    out[i] = table[(long long)idx[i / dim] * dim + i % dim];
}

// d_table[r, :] = sum of d_out[i, :] over the i with idx[i] = r, in order
// of i: one thread per table entry, no atomics (so the sum's order is fixed,
// and the same as the CPU's).
extern "C" __global__ void scatter_rows_f32(const float* __restrict__ d_out, const float* __restrict__ idx,
                                            float* __restrict__ d_table, int n, int rows, int dim) {
    long long i = global_index();
    if (i >= (long long)rows * dim) return;
    int r = i / dim, j = i % dim;
    float s = 0.0f;
    for (int k = 0; k < n; ++k)
        if ((int)idx[k] == r) s += d_out[(long long)k * dim + j];
    d_table[i] = s;
}

// ---- inverted dropout, its mask from Philox (as Tensor::dropout) ----
// philox_uniform comes from philox.cuh, compiled in front of this file.

// y = x * mask, mask = 0 where uniform i of the Philox stream `seed` is
// below p, else 1 / (1 - p). The gradient is the same op on dy with the same seed.
extern "C" __global__ void dropout_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float p,
                                       unsigned long long seed) {
    long long i = global_index();
    if (i >= n) return;
    const float keep = 1.0f / (1.0f - p);
    y[i] = x[i] * (philox_uniform(seed, 0, (unsigned long long)i) < p ? 0.0f : keep);
}
