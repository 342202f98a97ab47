// gemm.cuh: the tiled matrix product that conv2d.cu and matmul.cu build on.
// Each of them includes it; crates/cuda/src/source.rs hands it to NVRTC.
//
// The tiled GEMM: C[m, j] = sum_l A(m, l) * B(l, j), M x N x L, where the
// operands are functors. A 64 x 64 tile of C per block of 256 threads, 4 x 4
// outputs per thread (rows ty + 16 i, columns tx + 16 j, so that neighbouring
// threads read neighbouring shared-memory words), and the reduction in slices
// of 16 staged through shared memory.

#pragma once

#define TILE 64
#define SLICE 16

template <class A, class B, class Store>
static __device__ __forceinline__ void tiled_gemm(int M, int N, int L, const A& a, const B& b, const Store& store) {
    __shared__ float As[SLICE][TILE + 1];
    __shared__ float Bs[SLICE][TILE];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * TILE, n0 = blockIdx.x * TILE;

    float acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int l0 = 0; l0 < L; l0 += SLICE) {
        // 1024 numbers of each operand, 4 per thread. A runs fastest along
        // the reduction (contiguous in w and dy), B along the columns.
        for (int e = tid; e < SLICE * TILE; e += 256) {
            int l = e % SLICE, m = e / SLICE;
            As[l][m] = (m0 + m < M && l0 + l < L) ? a(m0 + m, l0 + l) : 0.0f;
            int jb = e % TILE, lb = e / TILE;
            Bs[lb][jb] = (n0 + jb < N && l0 + lb < L) ? b(l0 + lb, n0 + jb) : 0.0f;
        }
        __syncthreads();
        for (int l = 0; l < SLICE; ++l) {
            float ra[4], rb[4];
            for (int i = 0; i < 4; ++i) ra[i] = As[l][ty + 16 * i];
            for (int j = 0; j < 4; ++j) rb[j] = Bs[l][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += ra[i] * rb[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty + 16 * i;
        if (m >= M) continue;
        for (int j = 0; j < 4; ++j) {
            int col = n0 + tx + 16 * j;
            if (col < N) store(m, col, acc[i][j]);
        }
    }
}

