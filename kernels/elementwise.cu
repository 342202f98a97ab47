// elementwise.cu: the U-Net's pointwise ops and data movement, one thread
// per output element (launch::elementwise(n)).

static __device__ __forceinline__ long long global_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

// y = silu(x) = x sigmoid(x).
extern "C" __global__ void silu_f32(const float* __restrict__ x, float* __restrict__ y, long long n) {
    long long i = global_index();
    if (i < n) y[i] = x[i] / (1.0f + expf(-x[i]));
}

// x += y.
extern "C" __global__ void add_assign_f32(float* __restrict__ x, const float* __restrict__ y, long long n) {
    long long i = global_index();
    if (i < n) x[i] += y[i];
}

// x[r, j] += v[r] for r < rows, j < inner: a per-(sample, channel) value
// broadcast over the positions (the time embedding of a ResBlock).
extern "C" __global__ void add_broadcast_f32(float* __restrict__ x, const float* __restrict__ v, long long rows,
                                             int inner) {
    long long i = global_index();
    if (i < rows * inner) x[i] += v[i / inner];
}

// out[o, :] = [a[o, :ca]; b[o, :cb]] for o < outer: concatenation along an
// axis whose inner extent per outer index is ca and cb (channels * H * W for
// the U-Net's skip connections; whole batches for [x; x] with n = 1).
extern "C" __global__ void concat2_f32(const float* __restrict__ a, const float* __restrict__ b,
                                       float* __restrict__ out, long long outer, long long ca, long long cb) {
    long long i = global_index();
    if (i >= outer * (ca + cb)) return;
    long long o = i / (ca + cb), j = i % (ca + cb);
    out[i] = j < ca ? a[o * ca + j] : b[o * cb + (j - ca)];
}

// Nearest-neighbour x2 upsampling of [planes, h, w] to [planes, 2h, 2w].
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

// ---- gradients and the training step's pointwise work ----

// dx = dy silu'(x), silu'(x) = s (1 + x (1 - s)), s = sigmoid(x).
extern "C" __global__ void silu_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                        float* __restrict__ dx, long long n) {
    long long i = global_index();
    if (i >= n) return;
    float s = 1.0f / (1.0f + expf(-x[i]));
    dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
}

// The gradient of upsample2x_f32: each input pixel collects its 2 x 2 block.
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

// The inverse of concat2_f32 (and the gradient of it): cat [outer, ca + cb]
// back into a [outer, ca] and b [outer, cb].
extern "C" __global__ void split2_f32(const float* __restrict__ cat, float* __restrict__ a, float* __restrict__ b,
                                      long long outer, long long ca, long long cb) {
    long long i = global_index();
    if (i >= outer * (ca + cb)) return;
    long long o = i / (ca + cb), j = i % (ca + cb);
    if (j < ca) a[o * ca + j] = cat[i];
    else b[o * cb + (j - ca)] = cat[i];
}

// x_t = abar[r] x0 + bbar[r] e for the inner elements of each row r (one
// image): the closed form of the noising chain, with per-image t.
extern "C" __global__ void q_sample_f32(const float* __restrict__ x0, const float* __restrict__ e,
                                        const float* __restrict__ abar, const float* __restrict__ bbar,
                                        float* __restrict__ xt, long long n, int inner) {
    long long i = global_index();
    if (i < n) xt[i] = abar[i / inner] * x0[i] + bbar[i / inner] * e[i];
}

// The mean squared error's pieces: grad = scale (pred - target) (scale =
// 2 / n for the mean), sq = (pred - target)^2 (summed for the loss value).
extern "C" __global__ void mse_grad_f32(const float* __restrict__ pred, const float* __restrict__ target,
                                        float* __restrict__ grad, float* __restrict__ sq, long long n, float scale) {
    long long i = global_index();
    if (i >= n) return;
    float d = pred[i] - target[i];
    grad[i] = scale * d;
    sq[i] = d * d;
}

// ---- the class embedding: a table lookup and its gradient ----
// The indices come as floats (exact below 2^24; the table has 11 rows), so
// that every buffer of the executors is f32.

// out[i, :] = table[idx[i], :] for i < n rows of `dim`.
extern "C" __global__ void gather_rows_f32(const float* __restrict__ table, const float* __restrict__ idx,
                                           float* __restrict__ out, int n, int dim) {
    long long i = global_index();
    if (i >= (long long)n * dim) return;
    out[i] = table[(long long)idx[i / dim] * dim + i % dim];
}

// d_table[r, :] = sum of d_out[i, :] over the i with idx[i] = r: one thread
// per table entry, no atomics (so the sum's order is fixed).
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

// ---- inverted dropout, its mask from Philox (as crates/nn/src/layers/dropout.rs) ----
// philox_uniform comes from philox.cuh, compiled in front of this file.

// y = x * mask, mask = 0 where draw i of the Philox stream `seed` is below
// p, else 1 / (1 - p). The gradient is the same op on dy with the same seed.
extern "C" __global__ void dropout_f32(const float* __restrict__ x, float* __restrict__ y, long long n, float p,
                                       unsigned long long seed) {
    long long i = global_index();
    if (i >= n) return;
    y[i] = philox_uniform(seed, 0, (unsigned long long)i) < p ? 0.0f : x[i] * (1.0f / (1.0f - p));
}
