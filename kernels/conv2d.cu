// conv2d.cu: 2-D convolution, NCHW, weight [K, C, R, S], one stride and one
// zero padding for both axes; forward, and the gradients of input and weight.
//
// Each of the three is a matrix product whose operands are never stored
// (implicit GEMM): the tiles of a plain shared-memory GEMM are filled by
// reading the convolution's tensors through index arithmetic.
//
//   forward        y[k, (n,oy,ox)]  = sum over (c,r,s)    w[k, (c,r,s)] * x[n, c, oy*st-pad+r, ox*st-pad+s]
//                                     (+ bias[k] + shift[n, k] + residual[n, k, oy, ox], each optional)
//   input grad     dx[c, (n,iy,ix)] = sum over (k,r,s)    w[k, c, r, s] * dy[n, k, oy, ox]  where iy = oy*st-pad+r
//   weight grad    dw[k, (c,r,s)]   = sum over (n,oy,ox) dy[n, k, oy, ox] * x[n, c, oy*st-pad+r, ox*st-pad+s]
//
// The *_naive kernels compute the same sums one output per thread: the
// reference the tiled ones are tested against (on the GPU and in emulation).
//
// The tiled GEMM is gemm.cuh's (included below). Launch
// (crates/cuda/src/launch.rs): tiled kernels take 256 threads and a grid of
// (ceil(columns / 64), ceil(rows / 64)); naive ones one thread per output.

#include "gemm.cuh"

struct Conv {
    int n, c, h, w;     // input
    int k, r, s;        // weight (k output channels)
    int ho, wo;         // output
    int stride, pad;
};

static __device__ __forceinline__ Conv make_conv(int n, int c, int h, int w, int k, int r, int s, int stride,
                                                 int pad) {
    Conv g;
    g.n = n; g.c = c; g.h = h; g.w = w; g.k = k; g.r = r; g.s = s;
    g.stride = stride; g.pad = pad;
    g.ho = (h + 2 * pad - r) / stride + 1;
    g.wo = (w + 2 * pad - s) / stride + 1;
    return g;
}

// x[n, c, iy, ix], or 0 in the padding.
static __device__ __forceinline__ float read_padded(const float* x, const Conv& g, int n, int c, int iy, int ix) {
    if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) return 0.0f;
    return x[((n * g.c + c) * g.h + iy) * g.w + ix];
}

// ---------------------------------------------------------------------------
// Forward: rows are output channels k, columns (n, oy, ox), reduction (c, r, s).

struct FwdWeight {
    const float* w; int crs;
    __device__ float operator()(int k, int l) const { return w[k * crs + l]; }
};
struct FwdPatch {
    const float* x; Conv g;
    __device__ float operator()(int l, int col) const {
        int c = l / (g.r * g.s), rs = l % (g.r * g.s);
        int n = col / (g.ho * g.wo), p = col % (g.ho * g.wo);
        int oy = p / g.wo, ox = p % g.wo;
        return read_padded(x, g, n, c, oy * g.stride - g.pad + rs / g.s, ox * g.stride - g.pad + rs % g.s);
    }
};
// The terms added as y[n, k, p] is written: bias[k], shift[n, k] and
// residual[n, k, p], each absent when its pointer is null.
static __device__ __forceinline__ float addends(const float* bias, const float* shift, const float* residual,
                                                const Conv& g, int n, int k, int p) {
    float a = bias ? bias[k] : 0.0f;
    if (shift) a += shift[n * g.k + k];
    if (residual) a += residual[(n * g.k + k) * g.ho * g.wo + p];
    return a;
}

struct FwdStore {
    float* y; const float* bias; const float* shift; const float* residual; Conv g;
    __device__ void operator()(int k, int col, float v) const {
        int n = col / (g.ho * g.wo), p = col % (g.ho * g.wo);
        y[(n * g.k + k) * g.ho * g.wo + p] = v + addends(bias, shift, residual, g, n, k, p);
    }
};

// y = conv(x, w) + bias [K] + shift [N, K] + residual [N, K, Ho, Wo]; each
// of the three may be null.
extern "C" __global__ void __launch_bounds__(256) conv2d_fwd_f32(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    const float* __restrict__ shift, const float* __restrict__ residual, float* __restrict__ y, int n, int c, int h,
    int wd, int k, int r, int s, int stride, int pad) {
    Conv g = make_conv(n, c, h, wd, k, r, s, stride, pad);
    FwdWeight a = {w, c * r * s};
    FwdPatch b = {x, g};
    FwdStore st = {y, bias, shift, residual, g};
    tiled_gemm(k, n * g.ho * g.wo, c * r * s, a, b, st);
}

// ---------------------------------------------------------------------------
// Input gradient: rows are input channels c, columns (n, iy, ix), reduction
// (k, r, s). dy[n, k, oy, ox] contributes where oy * stride - pad + r = iy.

struct BwdInWeight {
    const float* w; Conv g;
    __device__ float operator()(int c, int l) const {
        int k = l / (g.r * g.s), rs = l % (g.r * g.s);
        return w[(k * g.c + c) * g.r * g.s + rs];
    }
};
struct BwdInGrad {
    const float* dy; Conv g;
    __device__ float operator()(int l, int col) const {
        int k = l / (g.r * g.s), rs = l % (g.r * g.s);
        int r = rs / g.s, s = rs % g.s;
        int n = col / (g.h * g.w), p = col % (g.h * g.w);
        int ty = p / g.w + g.pad - r, tx = p % g.w + g.pad - s;  // = oy * stride, = ox * stride
        if (ty < 0 || tx < 0 || ty % g.stride != 0 || tx % g.stride != 0) return 0.0f;
        int oy = ty / g.stride, ox = tx / g.stride;
        if (oy >= g.ho || ox >= g.wo) return 0.0f;
        return dy[((n * g.k + k) * g.ho + oy) * g.wo + ox];
    }
};
struct BwdInStore {
    float* dx; Conv g;
    __device__ void operator()(int c, int col, float v) const {
        int n = col / (g.h * g.w), p = col % (g.h * g.w);
        dx[(n * g.c + c) * g.h * g.w + p] = v;
    }
};

extern "C" __global__ void __launch_bounds__(256) conv2d_bwd_input_f32(
    const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
    int n, int c, int h, int wd, int k, int r, int s, int stride, int pad) {
    Conv g = make_conv(n, c, h, wd, k, r, s, stride, pad);
    BwdInWeight a = {w, g};
    BwdInGrad b = {dy, g};
    BwdInStore st = {dx, g};
    tiled_gemm(c, n * h * wd, k * r * s, a, b, st);
}

// ---------------------------------------------------------------------------
// Weight gradient: rows are output channels k, columns (c, r, s), reduction
// (n, oy, ox).

struct BwdWGrad {
    const float* dy; Conv g;
    __device__ float operator()(int k, int l) const {
        int n = l / (g.ho * g.wo), p = l % (g.ho * g.wo);
        return dy[(n * g.k + k) * g.ho * g.wo + p];
    }
};
struct BwdWPatch {
    const float* x; Conv g;
    __device__ float operator()(int l, int col) const {
        int n = l / (g.ho * g.wo), p = l % (g.ho * g.wo);
        int c = col / (g.r * g.s), rs = col % (g.r * g.s);
        return read_padded(x, g, n, c, (p / g.wo) * g.stride - g.pad + rs / g.s,
                           (p % g.wo) * g.stride - g.pad + rs % g.s);
    }
};
struct BwdWStore {
    float* dw; int crs;
    __device__ void operator()(int k, int col, float v) const { dw[k * crs + col] = v; }
};

extern "C" __global__ void __launch_bounds__(256) conv2d_bwd_weight_f32(
    const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dw,
    int n, int c, int h, int wd, int k, int r, int s, int stride, int pad) {
    Conv g = make_conv(n, c, h, wd, k, r, s, stride, pad);
    BwdWGrad a = {dy, g};
    BwdWPatch b = {x, g};
    BwdWStore st = {dw, c * r * s};
    tiled_gemm(k, c * r * s, n * g.ho * g.wo, a, b, st);
}

// ---------------------------------------------------------------------------
// The naive references: one thread per output element, the defining sums.

extern "C" __global__ void conv2d_fwd_naive_f32(const float* x, const float* w, const float* bias, const float* shift,
                                                const float* residual, float* y, int n, int c, int h, int wd, int k,
                                                int r, int s, int stride, int pad) {
    Conv g = make_conv(n, c, h, wd, k, r, s, stride, pad);
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * k * g.ho * g.wo) return;
    int ox = i % g.wo, oy = (i / g.wo) % g.ho, ko = (i / (g.wo * g.ho)) % k, ni = i / (g.wo * g.ho * k);
    float acc = 0.0f;
    for (int ci = 0; ci < c; ++ci)
        for (int ri = 0; ri < r; ++ri)
            for (int si = 0; si < s; ++si)
                acc += w[((ko * c + ci) * r + ri) * s + si] *
                       read_padded(x, g, ni, ci, oy * stride - pad + ri, ox * stride - pad + si);
    y[i] = acc + addends(bias, shift, residual, g, ni, ko, oy * g.wo + ox);
}

extern "C" __global__ void conv2d_bwd_input_naive_f32(const float* dy, const float* w, float* dx, int n, int c,
                                                      int h, int wd, int k, int r, int s, int stride, int pad) {
    Conv g = make_conv(n, c, h, wd, k, r, s, stride, pad);
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * c * h * wd) return;
    int ix = i % wd, iy = (i / wd) % h, ci = (i / (wd * h)) % c, ni = i / (wd * h * c);
    float acc = 0.0f;
    for (int ko = 0; ko < k; ++ko)
        for (int ri = 0; ri < r; ++ri)
            for (int si = 0; si < s; ++si) {
                int ty = iy + pad - ri, tx = ix + pad - si;
                if (ty < 0 || tx < 0 || ty % stride || tx % stride) continue;
                int oy = ty / stride, ox = tx / stride;
                if (oy >= g.ho || ox >= g.wo) continue;
                acc += w[((ko * c + ci) * r + ri) * s + si] * dy[((ni * k + ko) * g.ho + oy) * g.wo + ox];
            }
    dx[i] = acc;
}

extern "C" __global__ void conv2d_bwd_weight_naive_f32(const float* x, const float* dy, float* dw, int n, int c,
                                                       int h, int wd, int k, int r, int s, int stride, int pad) {
    Conv g = make_conv(n, c, h, wd, k, r, s, stride, pad);
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)k * c * r * s) return;
    int si = i % s, ri = (i / s) % r, ci = (i / (s * r)) % c, ko = i / (s * r * c);
    float acc = 0.0f;
    for (int ni = 0; ni < n; ++ni)
        for (int oy = 0; oy < g.ho; ++oy)
            for (int ox = 0; ox < g.wo; ++ox)
                acc += dy[((ni * k + ko) * g.ho + oy) * g.wo + ox] *
                       read_padded(x, g, ni, ci, oy * stride - pad + ri, ox * stride - pad + si);
    dw[i] = acc;
}
